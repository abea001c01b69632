"""GenerativeMetrics configured from YAML through LightningCLI, with the module's sample_images."""

from __future__ import annotations

import json

import pytest
from lightning.pytorch.cli import LightningCLI

CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  limit_train_batches: 2
  limit_val_batches: 1
  default_root_dir: {root}
  callbacks:
    - class_path: lightning_fid.GenerativeMetrics
      init_args:
        real: val
        metrics:
          - fid
          - class_path: lightning_fid.metrics.KID
            init_args:
              subsets: 4
              subset_size: 10
        feature_extractor:
          class_path: helpers.tiny.TinyFeatures
        num_samples: 23
        batch_size: 5
        input_range: [-1.0, 1.0]
        use_cache: false
        progress: false
        log_images: 0
    - class_path: lightning.pytorch.callbacks.EarlyStopping
      init_args:
        monitor: fid
        patience: 3
model:
  class_path: helpers.tiny.TinyGAN
data:
  class_path: helpers.tiny.TinyData
"""


@pytest.mark.slow
def test_lightning_cli_yaml_runs_end_to_end(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    cli = LightningCLI(args=["fit", "--config", str(config)], save_config_kwargs={"overwrite": True})
    (metrics,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "GenerativeMetrics"]
    assert [h["epoch"] for h in metrics.history] == [0, 1]
    assert metrics.history[-1]["fid"] > 0 and "kid" in metrics.history[-1]
    saved = json.loads((tmp_path / "lightning_fid_history.json").read_text())
    assert [e["fid"] for e in saved["evaluations"]] == [h["fid"] for h in metrics.history]
