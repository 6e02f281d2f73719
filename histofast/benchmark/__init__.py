"""The tiles-per-second benchmark behind ``histofast bench``: ``options`` (its flags and defaults, light to
import), ``slide`` (the generated slide it times), ``methods`` (recipe, decode limit, tile_grid, iter_tiles,
two passes), ``report`` (ratios in one run, targets, checks, table) and ``tiles_per_second`` (the run)."""
