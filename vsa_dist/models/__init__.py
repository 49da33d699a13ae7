"""The models (torch only). The region modes are named here, where choosing one needs no torch (a config's choices)."""

REGION_MODES = ("roi", "crop")
