"""The studies on the demo models (the presets', plan-caching, step-cache and quantized-kernel studies,
prompt following, the attention census and where along the noise schedule a model decides its clips):
library code for the scripts of the same names."""
