"""How reconstructions are scored: image metrics (one PSNR, SSIM and LPIPS home, :mod:`.metrics`), the ensemble
keys of several samples per image, the metrics file both runners write, and a quick check of a prior's denoising
(:mod:`.prior_check`)."""
