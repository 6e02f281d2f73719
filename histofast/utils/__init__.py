"""Small helpers every part of histofast uses: atomic file writes (``atomic``), image encoding for the
files it writes (``encode``), the machine record benchmarks carry (``machine``) and third-party noise routed into
reasons and the log (``noise``)."""
