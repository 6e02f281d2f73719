"""Small helpers every part of histofast uses: atomic file writes (``atomic``), image encoding for the
files it writes (``encode``) and the machine record benchmarks carry (``machine``)."""
