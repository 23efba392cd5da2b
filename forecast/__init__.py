"""Capacity forecasts as 15-minute slot arrays: OSCP blocks, merging, validity, fallback. No I/O."""
