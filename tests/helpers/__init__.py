"""Shared test helpers: tiny networks and trainers (``tiny``), real gloo process groups (``dist``), a
loopback HTTP server (``http``), random weights in the published formats (``weights``)."""
