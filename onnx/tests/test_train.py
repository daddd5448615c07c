import json

import pytest
import torch

from df_train.train import load_checkpoint, loss_weight, train

from .conftest import tiny_config


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    straight = tiny_config(tmp_path, out=str(tmp_path / "straight"), steps=20)
    train(straight, progress=False)
    # Interrupted: stop at 10 (a checkpoint), then run again with the full budget.
    interrupted = tiny_config(tmp_path, out=str(tmp_path / "resumed"), steps=10)
    train(interrupted, progress=False)
    resumed = tiny_config(tmp_path, out=str(tmp_path / "resumed"), steps=20)
    train(resumed, progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 20
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_resume_refuses_a_regenerated_dataset(tmp_path):
    import numpy as np

    cfg = tiny_config(tmp_path, out=str(tmp_path / "run"), steps=5)
    train(cfg, progress=False)
    data = dict(np.load(cfg.data))
    data[next(iter(data))] = data[next(iter(data))] * 1.01
    np.savez(cfg.data, **data)
    resumed = tiny_config(tmp_path, out=str(tmp_path / "run"), steps=10)
    with pytest.raises(ValueError, match=r"checkpoint.pt: trained on dataset sha256 .* is now .* mix two datasets"):
        train(resumed, progress=False)


def test_checkpoint_holds_what_export_needs(trained):
    cfg, path = trained
    ckpt = load_checkpoint(path)
    assert len(ckpt["normalization"]["mean"]) == cfg.layout.frame_dim
    assert len(ckpt["dataset_sha256"]) == 64
    log = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert log, "learning curve is logged"


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    import numpy as np

    from df_train.data import TokenWindows
    from df_train.train import build_model, diffusion_loss

    cfg = tiny_config(tmp_path)
    windows = TokenWindows(cfg.data, cfg.layout, cfg.tokens)
    x0, mask, inputs = windows.sample(np.random.default_rng(0), 16)
    assert inputs == {}, "episodes without cameras have no other model inputs"
    x0, mask = torch.from_numpy(x0), torch.from_numpy(mask).float()
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss():
        return diffusion_loss(model, x0, mask, cfg.min_snr_gamma, torch.Generator().manual_seed(0))

    first = loss().item()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.7 * first


def test_continuous_windows_span_episode_boundaries(tmp_path):
    import numpy as np

    from df_train.data import TokenWindows

    cfg = tiny_config(tmp_path)
    split = TokenWindows(cfg.data, cfg.layout, cfg.tokens)
    whole = TokenWindows(cfg.data, cfg.layout, cfg.tokens, continuous=True)
    assert len(split.episodes) == 12 and len(whole.episodes) == 1
    _, mask, _ = whole.sample(np.random.default_rng(0), 64)
    assert mask.mean() > 0.9, "windows of a continuous run are rarely cut"


def test_snapshots_export_like_checkpoints(tmp_path):
    from df_train.export import load_model

    cfg = tiny_config(tmp_path, steps=20, snapshot_every=10)
    train(cfg, progress=False)
    snaps = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))
    assert [p.name for p in snaps] == ["step0000010.pt", "step0000020.pt"]
    model, _, meta = load_model(snaps[0])
    assert meta["step"] == 10 and "optimizer" not in meta
    final, _, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(load_model(snaps[1])[0].state_dict().values(), final.state_dict().values()))


def test_resuming_accepts_operational_changes_and_refuses_others(tmp_path):
    import pytest

    train(tiny_config(tmp_path, steps=10), progress=False)
    train(tiny_config(tmp_path, steps=12, checkpoint_every=5, snapshot_every=6, threads=2), progress=False)
    # The same run and data by other paths (absolute, through a link).
    (tmp_path / "link").symlink_to(tmp_path)
    train(tiny_config(tmp_path, steps=13, out=str(tmp_path / "link" / "run"),
                      data=str((tmp_path / "link" / "data.npz").absolute())), progress=False)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: written by another run \(lr: 0\.0003 -> 0\.001\); resume"):
        train(tiny_config(tmp_path, steps=14, lr=1e-3), progress=False)
    with pytest.raises(ValueError, match=r"\(batch: 8 -> 4; width: 32 -> 64\)"):
        train(tiny_config(tmp_path, steps=14, batch=4, width=64), progress=False)


def test_a_resumed_run_records_the_code_of_each_part_and_an_unrecorded_start_as_unknown(tmp_path):
    from df_train.provenance import git_commit

    path = train(tiny_config(tmp_path, steps=10), progress=False)
    assert load_checkpoint(path)["train_commits"] == [{"step": 0, "commit": git_commit()}]
    old = load_checkpoint(path)
    del old["train_commits"]  # as written before commits were recorded
    torch.save(old, path)
    train(tiny_config(tmp_path, steps=12), progress=False)
    assert load_checkpoint(path)["train_commits"] == [{"step": 0, "commit": "unknown (not recorded)"},
                                                      {"step": 10, "commit": git_commit()}]


def test_a_missing_training_source_is_named_and_no_run_folder_is_left(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data: .*nope\.npz: no such file"):
        train(tiny_config(tmp_path, data=str(tmp_path / "nope.npz")), progress=False)
    with pytest.raises(FileNotFoundError, match=r"bags: .*: no manifest\.json there"):
        train(tiny_config(tmp_path, data="", bags=str(tmp_path)), progress=False)
    (tmp_path / "notes.md").write_text("# not data\n")
    with pytest.raises(ValueError, match=r"data: .*notes\.md: expected an \.npz from df-train datagen"):
        train(tiny_config(tmp_path, data=str(tmp_path / "notes.md")), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ({"reward": True}, r"reward: expected false: the Rust planner has no reward input"),
    ({"stabilization_level": 100}, r"stabilization_level: expected a level in \[0, timesteps = 100\), got 100"),
    ({"noise_clip": -1.0}, r"noise_clip: expected a finite number > 0, got -1.0"),
    ({"heads": 3}, r"heads: expected a divisor of width = 32, got 3"),
    ({"parameterization": "eps"}, r"parameterization: expected v or x0: .* multiplies an eps error by up to \d+"),
    ({"observation_dim": 3}, r"--observation-dim 3: .*data.npz has observations of shape \[480, 4\] \(expected \[steps, 3\]\)"),
    ({"action_dim": 3}, r"--action-dim 3: .*data.npz has actions of shape \[480, 2\] \(expected \[steps, 3\]\)"),
])
def test_settings_the_contract_cannot_use_are_named_before_a_run_folder_is_made(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, **override), progress=False)
    assert not (tmp_path / "run").exists()


def test_loss_weight_floor_keeps_the_noisiest_tokens_counting():
    snr = torch.tensor([1e-3, 0.5, 2.0, 50.0])
    x0_space = {"x0": lambda w: w, "eps": lambda w: w * snr, "v": lambda w: w * (snr + 1)}
    for p, to_x0 in x0_space.items():
        plain = to_x0(loss_weight(snr, p, 5.0))
        assert torch.allclose(plain, torch.tensor([1e-3, 0.5, 2.0, 5.0])), "min-SNR: the SNR, clipped at gamma"
        floored = to_x0(loss_weight(snr, p, 5.0, floor=1.0))
        assert torch.allclose(floored, torch.tensor([1.0, 1.0, 2.0, 5.0])), p


def test_the_cli_takes_the_layout_dims_from_the_dataset_manifest(tmp_path):
    from df_train.cli import main

    data = tmp_path / "pm.npz"
    with pytest.raises(SystemExit):
        main(["datagen", "pointmass", "--episodes", "0", "--out", str(data)])
    main(["datagen", "pointmass", "--episodes", "4", "--length", "40", "--out", str(data)])
    small = ["--frame-stack", "2", "--tokens", "4", "--width", "32", "--depth", "1", "--heads", "2", "--steps", "2",
             "--batch", "4", "--warmup", "1", "--threads", "1", "--quiet"]
    main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *small])
    cfg = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]
    assert (cfg["observation_dim"], cfg["action_dim"]) == (4, 2)
    data.with_suffix(".json").unlink()
    with pytest.raises(SystemExit, match=r"--observation-dim: not given, and the dataset has no manifest .*pm\.json"):
        main(["train", "--data", str(data), "--out", str(tmp_path / "run2"), *small])
    # Bags written before their manifest named the sizes.
    (tmp_path / "old_bags").mkdir()
    (tmp_path / "old_bags" / "manifest.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"--observation-dim: not given, and the dataset has no manifest .*manifest\.json"):
        main(["train", "--bags", str(tmp_path / "old_bags"), "--out", str(tmp_path / "run4"), *small])
    # A missing source is named before its manifest is looked for.
    with pytest.raises(FileNotFoundError, match=r"data: .*nope\.npz: no such file"):
        main(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "run5"), *small])
    with pytest.raises(FileNotFoundError, match=r"bags: .*nowhere: no manifest\.json there"):
        main(["train", "--bags", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run5"), *small])
    assert not (tmp_path / "run5").exists()
    (tmp_path / "bad.npz").write_bytes(b"")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match=r"bad\.json: not a JSON manifest"):
        main(["train", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "run5"), *small])
    # Given on the command line, the dims need no manifest.
    main(["train", "--data", str(data), "--out", str(tmp_path / "run3"), "--observation-dim", "4", "--action-dim", "2",
          *small])


def test_an_unusable_device_is_refused_naming_the_field(tmp_path):
    for name, reason in [("banana", "is not a torch device"), ("meta", "expected cpu, cuda or cuda:N")]:
        with pytest.raises(ValueError, match=f"device: '{name}'.*{reason}"):
            train(tiny_config(tmp_path, device=name), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda', but this torch .* sees no CUDA device"):
            train(tiny_config(tmp_path, device="cuda"), progress=False)
    assert not (tmp_path / "run").exists(), "a refused device writes nothing"


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_loss_on_a_device_is_the_cpu_loss(tmp_path, device):
    """Same batch and generator state: the same timesteps and noise, so the same loss up to
    arithmetic; another generator state gives another loss."""
    import copy

    import numpy as np

    from df_train.data import TokenWindows
    from df_train.train import build_model, diffusion_loss

    cfg = tiny_config(tmp_path)
    x0, mask, _ = TokenWindows(cfg.data, cfg.layout, cfg.tokens).sample(np.random.default_rng(0), 16)
    x0, mask = torch.from_numpy(x0), torch.from_numpy(mask).float()
    torch.manual_seed(0)
    model = build_model(cfg)
    on_device = copy.deepcopy(model).to(device)

    def loss(m, seed: int, dev: str) -> float:
        return diffusion_loss(m, x0.to(dev), mask.to(dev), cfg.min_snr_gamma, torch.Generator().manual_seed(seed)).item()

    cpu = loss(model, 0, "cpu")
    assert loss(on_device, 0, device) == pytest.approx(cpu, rel=1e-4)
    assert abs(loss(on_device, 1, device) - cpu) > 1e-2 * cpu, "other noise, other loss"


@pytest.mark.parametrize("device", DEVICES)
def test_a_run_trained_on_a_device_resumes_on_the_cpu(tmp_path, device):
    run = tmp_path / "run"
    train(tiny_config(tmp_path, steps=5, device=device), progress=False)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)  # no map_location: where it trained
    assert {t.device.type for t in saved["model"].values()} == {device}
    assert {t.device.type for t in saved["ema"].values()} == {"cpu"}, "snapshots export anywhere"
    train(tiny_config(tmp_path, steps=10), progress=False)
    resumed = load_checkpoint(run / "checkpoint.pt")
    assert resumed["step"] == 10
    assert any(not torch.equal(a.cpu(), b) for a, b in zip(saved["model"].values(), resumed["model"].values()))


def test_the_command_prints_what_a_user_can_fix_as_one_line(tmp_path, monkeypatch, capsys):
    from df_train.cli import run

    missing = str(tmp_path / "nope.pt")
    monkeypatch.delenv("DF_TRAIN_TRACEBACK", raising=False)
    assert run(["eval", "fruit-swap", "--checkpoint", missing, "--probe"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("df-train eval fruit-swap: ") and "nope.pt" in err and "Traceback" not in err
    assert err.rstrip().endswith("[FileNotFoundError; DF_TRAIN_TRACEBACK=1 for the traceback]")
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("DF_TRAIN_TRACEBACK", "0")
    assert run(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "run")]) == 1
    assert capsys.readouterr().err.startswith("df-train train: data: ")
    monkeypatch.setenv("DF_TRAIN_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run(["eval", "fruit-swap", "--checkpoint", missing, "--probe"])


def test_train_help_describes_every_flag_with_its_default(capsys):
    from df_train.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ["--seed SEED seed of the weights, batches and noise (default: 0)",
                     "--reward REWARD true: the token also carries the reward (refused for now: the Rust planner "
                     "has no reward input) (default: off)",
                     "--action-dim ACTION_DIM action size per frame (default: from the dataset's manifest)",
                     "--data DATA an episodes .npz"]:
        assert expected in text, expected
    assert "(default: )" not in text
