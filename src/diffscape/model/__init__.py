"""The network (:mod:`.unet`) and the noise schedule and samplers (:mod:`.diffusion`)."""
