"""The quality studies on the bundled demo model (the presets' and the plan-caching studies):
library code for scripts/quality_study.py and scripts/caching_study.py."""
