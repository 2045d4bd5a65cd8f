"""Built-in datasets: shapes, ranges, determinism, id sharding, split disjointness, and content checked against
independent sources (the scikit-image arrays themselves, BT.601 luma, the geometry each generator promises)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmaps_plugin.data import BUILTIN_DATASETS, builtin_dataset, parse_id_list

PROCEDURAL = ("cells", "rings", "phantoms")


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_shapes_ranges_and_item_contract(name):
    ds = builtin_dataset(name, resolution=32, num_images=4)
    channels = 3 if name == "photos" else 1
    assert len(ds) == 4 and ds.id_list == [0, 1, 2, 3]
    assert ds.images.shape == (4, channels, 32, 32) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.images.std() > 0.05  # not blank
    batch = next(iter(DataLoader(ds, batch_size=1, shuffle=False)))  # how InverseBench's main.py reads it
    assert set(batch) == {"target"} and batch["target"].shape == (1, channels, 32, 32)


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_deterministic_and_shardable_by_id(name):
    full = builtin_dataset(name, resolution=32, num_images=6)
    again = builtin_dataset(name, resolution=32, num_images=6)
    shard = builtin_dataset(name, resolution=32, id_list="2-3,5")
    assert torch.equal(full.images, again.images)
    assert shard.id_list == [2, 3, 5]
    assert torch.equal(shard.images, full.images[[2, 3, 5]])


@pytest.mark.parametrize("name", PROCEDURAL + ("photos",))
def test_seed_changes_images(name):
    ids = [4, 5, 6]  # photo test ids 0-3 are fixed centre crops; later ids are seeded random crops
    a = builtin_dataset(name, resolution=32, id_list=ids, seed=0).images
    b = builtin_dataset(name, resolution=32, id_list=ids, seed=1).images
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 0.1


def _min_pairwise_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()).min().item()


@pytest.mark.parametrize("name", PROCEDURAL + ("photos",))
def test_train_val_and_test_splits_share_no_image(name):
    test = builtin_dataset(name, resolution=32, num_images=16, split="test").images
    val = builtin_dataset(name, resolution=32, num_images=16, split="val").images
    train = builtin_dataset(name, resolution=32, num_images=64, split="train").images
    # within one split images differ too, so a split collision would show as a distance far below this scale
    for a, b in ((test, train), (test, val), (val, train)):
        assert _min_pairwise_distance(a, b) > 1.0


def test_faces_are_the_lfw_subset_faces_split_80_8_12():
    import skimage.data

    lfw = torch.from_numpy(np.asarray(skimage.data.lfw_subset(), dtype=np.float32)) * 2 - 1
    test = builtin_dataset("faces", resolution=25, num_images=12, split="test").images[:, 0]
    val = builtin_dataset("faces", resolution=25, num_images=8, split="val").images[:, 0]
    train = builtin_dataset("faces", resolution=25, num_images=80, split="train").images[:, 0]
    torch.testing.assert_close(test, lfw[80:92], atol=1e-6, rtol=0)  # same-size bicubic resize is the identity
    torch.testing.assert_close(val, lfw[92:100], atol=1e-6, rtol=0)
    torch.testing.assert_close(train, lfw[:80], atol=1e-6, rtol=0)
    for a, b in ((test, train), (test, val), (val, train)):
        assert _min_pairwise_distance(a, b) > 1.0
    with pytest.raises(ValueError, match="faces test split has 12 images"):
        builtin_dataset("faces", id_list=[12])


def test_photo_test_id0_is_the_astronaut_centre_crop():
    import skimage.data

    astronaut = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255 * 2 - 1  # 512×512
    image = builtin_dataset("photos", resolution=512, id_list=[0]).images[0]
    torch.testing.assert_close(image, astronaut, atol=1e-5, rtol=0)


def test_channel_conversion_uses_bt601_luma_and_replication():
    rgb = builtin_dataset("photos", resolution=32, num_images=2).images
    gray = builtin_dataset("photos", resolution=32, num_images=2, channels=1).images
    weights = torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(gray[:, 0], torch.einsum("c,bchw->bhw", weights, rgb), atol=1e-6, rtol=0)
    cells = builtin_dataset("cells", resolution=32, num_images=2).images
    cells3 = builtin_dataset("cells", resolution=32, num_images=2, channels=3).images
    assert torch.equal(cells3, cells.expand(-1, 3, -1, -1))


def _radius_grid(resolution):
    t = (torch.arange(resolution) + 0.5) / resolution * 2 - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    return (x ** 2 + y ** 2).sqrt()


def test_rings_put_their_light_on_an_annulus():
    images = (builtin_dataset("rings", resolution=64, num_images=8).images[:, 0] + 1) / 2
    r = _radius_grid(64)
    mean_radius = (images * r).sum(dim=(1, 2)) / images.sum(dim=(1, 2))
    # ring radius 0.3–0.5 with centre offsets up to 0.14 and faint inner emission
    assert ((mean_radius > 0.2) & (mean_radius < 0.65)).all()
    assert (images[:, r < 0.1].mean(dim=1) < images.amax(dim=(1, 2)) * 0.5).all()  # a dark centre (the shadow)


def test_phantoms_have_a_skull_inside_a_black_background():
    images = builtin_dataset("phantoms", resolution=64, num_images=8).images[:, 0]
    r = _radius_grid(64)
    assert (images[:, r > 1.0] == -1).all()  # skull semi-axes are < 0.92 (plus 0.05 offset)
    assert (images.amax(dim=(1, 2)) == 1).all()  # the skull has intensity 1
    assert (images[:, r < 0.3].mean(dim=1) > -0.9).all()  # tissue inside


def test_cells_are_sparse_bright_objects_on_a_dark_background():
    images = builtin_dataset("cells", resolution=64, num_images=8).images[:, 0]
    background = -1 + 2 * 0.03
    dark = (images - background).abs() < 0.02
    assert (dark.float().mean(dim=(1, 2)) > 0.3).all()
    assert (images.amax(dim=(1, 2)) > 0).all()


def test_parse_id_list_and_errors():
    assert parse_id_list("0-2, 5", None) == [0, 1, 2, 5]
    assert parse_id_list([3, 1], None) == [3, 1]
    assert parse_id_list(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="inclusive range"):
        parse_id_list("a-b", None)
    with pytest.raises(ValueError, match="num_images"):
        parse_id_list(None, 0)
    with pytest.raises(ValueError, match="valid names: cells, rings, phantoms, faces, photos"):
        builtin_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        builtin_dataset("cells", split="dev")
    with pytest.raises(ValueError, match="channels"):
        builtin_dataset("cells", channels=2)
