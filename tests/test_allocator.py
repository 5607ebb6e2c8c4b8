"""ggl.core.allocator: an attack's freed trial updates are reused, not returned to the OS and faulted in
again at every generation (measured in benchmarks/bench_allocator.py: ~3x faster on the CNN)."""
import subprocess
import sys
import textwrap

import pytest

from ggl.core.allocator import retention_supported

# Page faults of one batched evaluation of 20 candidates on the federation's CNN (20 x 544,522
# parameters = 44 MB of trial updates, materialised as an adaptive attacker's are, in one pass: the CPU's
# cache-sized chunks would hide the effect under glibc's dynamic mmap threshold), in steady state,
# with glibc's defaults and after retain_freed_memory(). A fresh process, so the defaults are in force.
SCRIPT = textwrap.dedent("""
    import resource, torch
    from ggl.core.allocator import retain_freed_memory
    from ggl.attack.objective import GGLObjective
    from ggl.attack.observation import Observation
    from ggl.models import build_model
    from ggl.models.gan import Generator

    torch.manual_seed(0)
    model = build_model("cnn", 1, 10, seed=0)
    x, y = torch.rand(1, 1, 32, 32), torch.tensor([3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    update = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
    obs = Observation(arch="cnn", channels=1, num_classes=10, state=model.state_dict(),
                      names=[n for n, _ in model.named_parameters()], update=update, kind="gradient",
                      batch_size=1, local_steps=1, lr=0.05, local_batch_size=32, defenses=[])
    objective = GGLObjective(obs, Generator(128, 1, 32, 10).eval().requires_grad_(False), y, model=model)
    objective.factored_trial = False  # every update materialised, as for an adaptive attacker
    objective.chunk = 1 << 30  # the whole population in one pass (as on a GPU): 44 MB of updates at once
    z = torch.randn(20, objective.dim)

    def faults_per_generation():
        counts = []
        with torch.no_grad():
            for _ in range(3):  # steady state: the allocator has seen this generation's blocks before
                objective(z)
            for _ in range(3):  # the fewest of three (a generation may now and then grow the heap once)
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                objective(z)
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return min(counts)

    default = faults_per_generation()
    assert retain_freed_memory()
    largest = max(p.numel() for p in model.parameters())  # the first linear layer's weight, 95% of them
    print(default, faults_per_generation(), z.shape[0] * largest * 4 // 4096)
""")


@pytest.mark.skipif(not retention_supported(), reason="glibc only (elsewhere retain_freed_memory is a no-op)")
def test_an_attack_generation_reuses_the_last_ones_memory():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    default, retained, largest_layer_pages = map(int, out.stdout.split())
    # the default: the largest layer's 20 gradients (42 MB, over glibc's 32 MB ceiling for its dynamic mmap
    # threshold) are mapped afresh and faulted in at every generation
    assert default >= largest_layer_pages
    assert retained < default // 10  # retained: the freed heap is reused
