"""Dead-code restart of the MS-ILLM labeler (codecx train-labeler --restart-dead; Jukebox's remedy
for codebook collapse, used by the CPU-scale study experiments/illm)."""
import torch

from codecx.regularizers.labeler import VQLabeler, train_labeler, load_labeler


def _tiny():
    return VQLabeler(ch=8, ch_mult=(1, 1, 1, 1), num_res_blocks=1, embed_dim=8, code_dim=4, codebook_size=16)


def test_idle_codes_restart_at_batch_latents():
    torch.manual_seed(0)
    lab = _tiny()
    z = torch.nn.functional.normalize(torch.randn(2, 4, 3, 3), dim=1)
    idx = torch.zeros(2, 3, 3, dtype=torch.long)          # only code 0 in use: a collapsed codebook
    idle = torch.zeros(16, dtype=torch.long)
    before = lab.codebook.detach().clone()
    assert lab.restart_dead_codes(z, idx, idle, after=2) == 0   # idle 1 step: not yet dead
    assert idle.tolist() == [0] + [1] * 15
    assert lab.restart_dead_codes(z, idx, idle, after=2) == 15  # idle 2 steps: the other 15 restart
    assert torch.equal(lab.codebook[0], before[0]) and idle.sum() == 0
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    for row in lab.codebook[1:]:                            # every restarted code is a latent of the batch
        assert torch.isclose(flat, row).all(dim=1).any()
    assert lab.nearest(z).unique().numel() > 1              # the batch now spreads over several codes


def test_train_labeler_with_restart(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    d = tmp_path / "img"
    d.mkdir()
    for i in range(2):
        a = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(a).save(d / f"{i}.png")
    out = tmp_path / "lab.pt"
    m = train_labeler(str(d), str(out), steps=3, batch_size=2, crop_size=32, no_lpips=True, log_every=0,
                      restart_dead=1, ch=8, ch_mult=[1, 1, 1, 1], num_res_blocks=1, embed_dim=8, code_dim=4,
                      codebook_size=16)
    assert m["codes_used"] >= 1 and load_labeler(out).codebook_size == 16
