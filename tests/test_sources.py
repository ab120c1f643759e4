"""embedfm.sources: data specs, folder / CSV / IDX sets, the decode cache, and every bad input as one line."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from embedfm import sources
from embedfm.data import CLASS_NAMES, ImageSet
from embedfm.errors import DataError


def opts(tmp_path, **kw) -> sources.Options:
    return sources.Options(cache_dir=tmp_path / "cache", progress=False, **kw)


def tiny_set(n_train=12, n_test=6, size=(6, 5), rgb=False, classes=3, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    shape = (3, *size) if rgb else size
    x = lambda n: torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    y = lambda n: (torch.arange(n) % classes).to(torch.uint8)
    names = tuple(f"c/{i}" for i in range(classes))  # a '/' in a name: folders are named without it
    return ImageSet(x(n_train), y(n_train), x(n_test), y(n_test), source="made", class_names=names)


def write_png(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def flat_folder(root, per_class=5, classes=("a", "b"), size=(4, 4), rgb=False, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            shape = (*size, 3) if rgb else size
            write_png(root / c / f"{c}{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return root


# ----------------------------------------------------------------------------------------------
# specs and the three readers


def test_spec_parsing():
    assert sources.parse_spec("fashion-mnist") == ("fashion-mnist", None)
    assert sources.parse_spec("folder:x/y")[0] == "folder"
    for bad in ("folder", "folder:", "zip:x", "FASHION"):
        with pytest.raises(DataError, match="expected fashion-mnist, idx:DIR, folder:DIR or csv:FILE"):
            sources.parse_spec(bad)


@pytest.mark.parametrize("rgb", [False, True])
def test_a_set_written_as_a_folder_reads_back_identical(tmp_path, rgb):
    data = tiny_set(rgb=rgb)
    root = sources.write_folder(data, tmp_path / "set")
    got = sources.load(f"folder:{root}", opts(tmp_path))
    for k in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(got, k), getattr(data, k)), k
    assert got.class_names == data.class_names
    assert got.notes["test_split"] == "given" and got.in_channels == (3 if rgb else 1)
    assert got.fingerprint() == data.fingerprint()


def test_csv_reads_the_same_set_as_the_folder(tmp_path):
    data = tiny_set()
    sources.write_folder(data, tmp_path / "set")
    rows = ["path,label,split"]
    for split, y in (("train", data.train_labels), ("test", data.test_labels)):
        for i in range(len(y)):
            name = data.class_names[int(y[i])]
            rows.append(f"set/{split}/{sources.folder_name(name)}/{i:06d}.png,{name},{split}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    # classes.txt beside the CSV fixes the label order; without it names sort
    (tmp_path / "classes.txt").write_text("".join(n + "\n" for n in data.class_names))
    got = sources.load(f"csv:{tmp_path / 'set.csv'}", opts(tmp_path))
    assert torch.equal(got.train_images, data.train_images) and torch.equal(got.test_labels, data.test_labels)


def test_idx_dir_of_another_size_with_class_names_file(tmp_path):
    import gzip

    def idx(path, a):
        head = struct.pack(">I", 2051 if a.ndim == 3 else 2049) + struct.pack(f">{a.ndim}I", *a.shape)
        with gzip.open(path, "wb") as f:
            f.write(head + a.tobytes())

    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 8)):
        idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
        idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 4).astype(np.uint8))
    got = sources.load(f"idx:{tmp_path}", opts(tmp_path))
    assert got.class_names == ("0", "1", "2", "3") and got.image_size == (8, 8)
    (tmp_path / "classes.txt").write_text("w\nx\ny\nz\n")
    assert sources.load(f"idx:{tmp_path}", opts(tmp_path)).class_names == ("w", "x", "y", "z")


def test_flat_folder_gets_a_seeded_stratified_test_split(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=10)
    a = sources.load(f"folder:{root}", opts(tmp_path, test_frac=0.3))
    assert a.class_names == ("a", "b") and a.image_size == (4, 4)
    assert torch.bincount(a.test_labels.long()).tolist() == [3, 3]
    assert a.notes["test_split"] == "stratified, 0.3 of each class, seed 0"
    b = sources.load(f"folder:{root}", opts(tmp_path / "other", test_frac=0.3))  # decoded again, same split
    assert torch.equal(a.test_images, b.test_images)


def test_pixel_statistics_come_from_the_training_split(tmp_path):
    data = tiny_set(rgb=True)
    got = sources.load(f"folder:{sources.write_folder(data, tmp_path / 's')}", opts(tmp_path))
    x = data.train_images.double() / 255
    assert got.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert got.std == pytest.approx(x.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)


def test_sizes_differ_one_line_or_resize(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=4)
    write_png(root / "a" / "big.png", np.zeros((9, 7), dtype=np.uint8))
    with pytest.raises(DataError, match=r"big.png: 7x9 pixels, but most images are 4x4 .*--image-size"):
        sources.load(f"folder:{root}", opts(tmp_path))
    for mode in sources.RESIZE_MODES:
        got = sources.load(f"folder:{root}", opts(tmp_path, image_size=6, resize=mode))
        assert got.image_size == (6, 6) and got.notes["resize"] == f"{mode} to 6"


def test_crop_and_pad_geometry():
    from embedfm.images import resize

    a = np.full((10, 20), 200, dtype=np.uint8)
    assert resize(a, 5, "crop").shape == (5, 5) and (resize(a, 5, "crop") == 200).all()
    p = resize(a, 10, "pad")  # 20 wide → 10 wide, 5 high, centred on black
    assert p.shape == (10, 10) and (p[:2] == 0).all() and (p[3:7] == 200).all() and (p[8:] == 0).all()


def test_the_cache_is_used_and_a_changed_file_is_noticed(tmp_path, monkeypatch):
    root = flat_folder(tmp_path / "f", per_class=4)
    first = sources.load(f"folder:{root}", opts(tmp_path))
    real = sources._decode
    monkeypatch.setattr(sources, "_decode", lambda *a: pytest.fail("decoded again"))
    assert torch.equal(sources.load(f"folder:{root}", opts(tmp_path)).train_images, first.train_images)
    f = root / "a" / "a0.png"
    write_png(f, np.full((4, 4), 7, dtype=np.uint8))
    os.utime(f, ns=(1, 1))  # a new mtime even on a coarse clock
    monkeypatch.setattr(sources, "_decode", real)
    again = sources.load(f"folder:{root}", opts(tmp_path))
    assert not torch.equal(torch.cat([again.train_images, again.test_images]),
                           torch.cat([first.train_images, first.test_images]))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# image modes that are not plain 8-bit grey or RGB


def test_cmyk_16_bit_palette_and_alpha_images_decode(tmp_path):
    from embedfm.images import open_checked, pixels

    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    cases = {
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "grey16.png": Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "alpha.png": Image.fromarray(np.dstack([rgb, np.zeros((4, 4), np.uint8)]), "RGBA"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    dec = {n: open_checked(tmp_path / n, n, 10**6, pixels) for n in cases}
    assert dec["cmyk.jpg"].shape == (4, 4, 3) and dec["cmyk.jpg"][..., 0].min() > 200
    assert dec["grey16.png"].shape == (4, 4) and (dec["grey16.png"] == 255).all()  # scaled, not clipped
    assert dec["palette.png"].shape == (4, 4, 3) and (dec["palette.png"][..., 0] == 255).all()
    assert (dec["alpha.png"] == 255).all()  # fully transparent: white, as a viewer on a white page shows it


# ----------------------------------------------------------------------------------------------
# bad input: one line naming the file and the fix; --skip-bad records what it skipped


def bomb_png(path, w=100_000, h=100_000):
    """A valid PNG header declaring w×h pixels, with almost no data."""
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


BAD_FILES = {
    "empty.png": lambda p: p.write_bytes(b""),
    "text.png": lambda p: p.write_text("not an image"),
    "truncated.png": lambda p: p.write_bytes(_png_bytes()[:60]),
    "bomb.png": bomb_png,
}


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_image_is_one_line_and_skip_bad_records_it(tmp_path, name):
    root = flat_folder(tmp_path / "f", per_class=4)
    BAD_FILES[name](root / "a" / name)
    with pytest.raises(DataError) as e:
        sources.load(f"folder:{root}", opts(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "--skip-bad" in msg
    got = sources.load(f"folder:{root}", opts(tmp_path, skip_bad=True))
    assert [os.path.basename(p) for p in got.notes["skipped"]] == [name]
    assert len(got.train_labels) + len(got.test_labels) == 8


def test_symlink_loop_and_dangling_link(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=4)
    (root / "a" / "loop.png").symlink_to(root / "a" / "loop.png")
    (root / "b" / "sub").symlink_to(root / "b", target_is_directory=True)  # a dir loop: not followed
    with pytest.raises(DataError, match=r"loop.png: broken or looping symlink; remove it or pass --skip-bad"):
        sources.load(f"folder:{root}", opts(tmp_path))
    assert len(sources.load(f"folder:{root}", opts(tmp_path, skip_bad=True)).notes["skipped"]) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=4)
    (root / "a" / "a0.png").chmod(0)
    with pytest.raises(DataError, match=r"a0.png: not a readable image"):
        sources.load(f"folder:{root}", opts(tmp_path))


def test_grey_and_colour_mixed_is_one_line_unless_channels_given(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=4)
    write_png(root / "b" / "colour.png", np.dstack([np.zeros((4, 4), np.uint8), np.full((4, 4), 9, np.uint8),
                                                     np.zeros((4, 4), np.uint8)]))  # fmt: skip
    with pytest.raises(DataError, match=r"colour.png: a colour image in a set of mostly grey ones .*--channels 3"):
        sources.load(f"folder:{root}", opts(tmp_path))
    assert sources.load(f"folder:{root}", opts(tmp_path, channels="3")).in_channels == 3
    assert sources.load(f"folder:{root}", opts(tmp_path, channels="1")).in_channels == 1


def test_folder_layout_errors(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=4)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder holds no images"):
        sources.load(f"folder:{root}", opts(tmp_path))
    (root / "empty").rmdir()
    write_png(root / "tiny" / "t0.png", np.zeros((4, 4), np.uint8))
    write_png(root / "tiny" / "t1.png", np.ones((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"class 'tiny' has 2 image\(s\), too few to split"):
        sources.load(f"folder:{root}", opts(tmp_path))
    with pytest.raises(DataError, match=r"no class folders"):
        sources.load(f"folder:{tmp_path / 'f' / 'a'}", opts(tmp_path))
    with pytest.raises(DataError, match=r"nothere: not found"):
        sources.load(f"folder:{tmp_path / 'nothere'}", opts(tmp_path))


def test_duplicates_across_train_and_test_are_counted(tmp_path, capsys):
    data = tiny_set()
    data.test_images[2] = data.train_images[5]
    got = sources.load(f"folder:{sources.write_folder(data, tmp_path / 's')}", opts(tmp_path))
    assert got.notes["duplicates"]["count"] == 1 and "000005.png" in got.notes["duplicates"]["examples"][0]
    assert "1 test images also appear in the training split" in capsys.readouterr().out


@pytest.mark.parametrize(
    "rows,match",
    [
        ("a/a0.png,a\nmissing.png,b\n", r"set.csv:2: missing.png: file not found"),
        ("a/a0.png,a,train\na/a1.png,a,validation\n", r"set.csv:2: unknown split 'validation'"),
        ("a/a0.png\n", r"set.csv:1: expected path,label\[,split\], got 1 fields"),
        ("a/a0.png,a,train\na/a1.png,a\n", r"some rows name a split and some do not"),
        ("path,label\n", r"set.csv: no rows"),
    ],
)
def test_csv_errors(tmp_path, rows, match):
    flat_folder(tmp_path, per_class=4)
    (tmp_path / "set.csv").write_text(rows)
    with pytest.raises(DataError, match=match):
        sources.load(f"csv:{tmp_path / 'set.csv'}", opts(tmp_path))


def test_csv_in_another_encoding_is_one_line(tmp_path):
    flat_folder(tmp_path, per_class=4)
    (tmp_path / "set.csv").write_bytes("a/a0.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"set.csv: not UTF-8 text \(byte 12\); save it as UTF-8"):
        sources.load(f"csv:{tmp_path / 'set.csv'}", opts(tmp_path))


def test_a_set_over_half_the_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    root = flat_folder(tmp_path / "f", per_class=4)
    monkeypatch.setattr(sources, "_memory_limit", lambda: 100)
    monkeypatch.setattr(sources, "pixels", lambda img: pytest.fail("decoded"))
    with pytest.raises(DataError, match=r"8 images of 4x4 need about 0.0 GiB, over half of this machine's memory"):
        sources.load(f"folder:{root}", opts(tmp_path))


def test_fashion_mnist_names_survive_a_folder_round_trip(tmp_path):
    data = ImageSet(*(torch.zeros(n, 2, 2, dtype=torch.uint8) if i % 2 == 0 else (torch.arange(n) % 10).to(torch.uint8)
                      for i, n in enumerate((30, 30, 10, 10))), source="x")  # fmt: skip
    got = sources.load(f"folder:{sources.write_folder(data, tmp_path / 's')}", opts(tmp_path))
    assert got.class_names == CLASS_NAMES
