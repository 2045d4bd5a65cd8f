"""Compare our torch JPEG encode-decode with Pillow's libjpeg on scikit-image's photos.

For each image and quality factor it prints the PSNR (8-bit scale) of our decoded image
against Pillow's, the largest absolute pixel difference, each codec's PSNR against the
original, and whether Pillow's quantization tables equal ours.

    python scripts/jpeg_vs_pillow.py [--qualities 5 10 50]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from skimage import data
from torchmetrics.functional.image import peak_signal_noise_ratio

from lmaps_plugin.operators.jpeg import jpeg_roundtrip_pixels, pillow_jpeg_roundtrip, quant_tables


def test_images() -> dict[str, np.ndarray]:
    """Named uint8 crops (H, W[, 3]) of scikit-image's bundled photos, several sizes."""
    astronaut, coffee, chelsea, camera = data.astronaut(), data.coffee(), data.chelsea(), data.camera()
    return {
        "astronaut 64": astronaut[100:164, 200:264],
        "astronaut 256": astronaut[:256, 128:384],
        "astronaut 512": astronaut,
        "coffee 64": coffee[150:214, 250:314],
        "coffee 256": coffee[50:306, 100:356],
        "chelsea 64": chelsea[80:144, 180:244],
        "chelsea 256": chelsea[20:276, 100:356],
        "chelsea 300x451": chelsea,
        "camera 64 (gray)": camera[200:264, 200:264],
        "camera 256 (gray)": camera[128:384, 128:384],
    }


def ours(image: np.ndarray, quality: int) -> np.ndarray:
    """Our codec on a uint8 (H, W[, 3]) array, returned the same way."""
    t = torch.from_numpy(image).float()
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = jpeg_roundtrip_pixels(t, quality)[0]
    out = out[0] if image.ndim == 2 else out.permute(1, 2, 0)
    return out.to(torch.uint8).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(torch.from_numpy(a).double(), torch.from_numpy(b).double(),
                                         data_range=255.0))


def tables_match(pillow_tables: dict, quality: int, gray: bool) -> bool:
    luma, chroma = (t.to(torch.int64).flatten().tolist() for t in quant_tables(quality))
    return pillow_tables[0] == luma and (gray or pillow_tables[1] == chroma)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qualities", type=int, nargs="+", default=[5, 10, 50])
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"{'QF':>3} | {'image':<18} | {'ours vs Pillow':>14} | {'max |diff|':>10} | "
              f"{'ours vs orig':>12} | {'Pillow vs orig':>14} | tables")
    print(header)
    print("-" * len(header))
    for quality in args.qualities:
        rows = []
        for name, image in test_images().items():
            reference, tables = pillow_jpeg_roundtrip(image, quality)
            mine = ours(image, quality)
            diff = int(np.abs(mine.astype(np.int64) - reference).max())
            rows.append(psnr(mine, reference))
            print(f"{quality:>3} | {name:<18} | {rows[-1]:>11.2f} dB | {diff:>10d} | "
                  f"{psnr(mine, image):>9.2f} dB | {psnr(reference, image):>11.2f} dB | "
                  f"{'equal' if tables_match(tables, quality, image.ndim == 2) else 'DIFFER'}")
        print(f"{quality:>3} | {'min / mean':<18} | {min(rows):>6.2f} / {np.mean(rows):.2f}")
    print("PSNR in dB on the 8-bit scale (data range 255).")


if __name__ == "__main__":
    main()
