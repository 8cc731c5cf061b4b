"""0_train_lora.sh builds the right command for the devices and nodes it is given (RANK1_PRINT_ONLY=1)."""

import os
import shlex
import subprocess

import pytest

from rank1.config import REPO_ROOT

LAUNCHER_VARS = ("CUDA_VISIBLE_DEVICES", "NPROC", "ENGINE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "RDZV_ID", "DS_CONFIG", "PYTHON", "RANK1_PROFILE")
DS = str(REPO_ROOT / "configs" / "deepspeed_zero3.json")
TRAIN_PY = str(REPO_ROOT / "s1_peft" / "train.py")


def fake_tool(folder, name, script):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/usr/bin/env bash\n{script}\n")
    (folder / name).chmod(0o755)


@pytest.fixture
def launch(tmp_path):
    """Run the launcher in print-only mode under ``env`` (on top of a clean environment whose nvidia-smi lists
    ``smi_gpus`` GPUs, or fails when None); returns (returncode, training argv, stderr)."""
    tools = tmp_path / "bin"

    def run(env=None, smi_gpus=None, scontrol_hosts=None, args=("--profile", "test")):
        gpus = "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'; " for i in range(smi_gpus or 0))
        fake_tool(tools, "nvidia-smi", gpus + "true" if smi_gpus is not None else "exit 9")
        if scontrol_hosts:
            fake_tool(tools, "scontrol", '[ "$1 $2" = "show hostnames" ] && printf "%s\\n" ' + " ".join(scontrol_hosts))
        base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
        full = {**base, "PATH": f"{tools}:{os.environ['PATH']}", "PYTHON": "python", "RANK1_PRINT_ONLY": "1",
                **(env or {})}
        proc = subprocess.run(["bash", str(REPO_ROOT / "0_train_lora.sh"), *args], env=full, capture_output=True,
                              text=True, timeout=60)
        lines = proc.stdout.strip().splitlines()
        return proc.returncode, shlex.split(lines[-1]) if lines else [], proc.stderr

    return run


def torchrun(*flags, args=("--profile", "test"), deepspeed=True):
    return ["python", "-m", "torch.distributed.run", *flags, TRAIN_PY, *args,
            *(["--deepspeed", DS] if deepspeed else [])]


def test_cuda_visible_devices_counts_the_gpus(launch):
    assert launch({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, smi_gpus=8)[:2] == \
        (0, torchrun("--nproc_per_node", "4", "--master_port", "29500"))
    assert launch(smi_gpus=2)[1] == torchrun("--nproc_per_node", "2", "--master_port", "29500")
    assert launch({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb", "ENGINE": "ddp"}, smi_gpus=8)[1] == \
        torchrun("--nproc_per_node", "2", "--master_port", "29500", deepspeed=False)


@pytest.mark.parametrize("visible", ["", "-1", "0,-1,2"])
def test_no_or_one_visible_gpu_is_one_process(launch, visible):
    """Empty or -1 hides every GPU (CUDA stops at the first negative id); one GPU is one plain process."""
    assert launch({"CUDA_VISIBLE_DEVICES": visible}, smi_gpus=8)[:2] == (0, ["python", TRAIN_PY, "--profile", "test"])


def test_cpu_machine_is_one_process_and_print_only_writes_nothing(launch, isolated_root):
    code, argv, _ = launch(args=("--profile", "test", "--max_steps", "3"))
    assert (code, argv) == (0, ["python", TRAIN_PY, "--profile", "test", "--max_steps", "3"])
    assert not (isolated_root / "logs").exists()
    assert launch({"NPROC": "2"})[1] == torchrun("--nproc_per_node", "2", "--master_port", "29500", deepspeed=False)


def test_slurm_job_of_two_nodes_uses_the_c10d_rendezvous(launch):
    slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242",
             "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    code, argv, err = launch(slurm, smi_gpus=8, scontrol_hosts=["gpu07", "gpu08"], args=("--profile", "paper"))
    assert (code, argv) == (0, torchrun("--nnodes", "2", "--nproc_per_node", "4", "--rdzv_backend", "c10d",
                                        "--rdzv_endpoint", "gpu07:29500", "--rdzv_id", "4242",
                                        args=("--profile", "paper"))), err
    # the torchrun variables win over SLURM's
    env = {**slurm, "NNODES": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29600", "RDZV_ID": "r"}
    assert launch(env, scontrol_hosts=["gpu07", "gpu08"])[1] == torchrun(
        "--nnodes", "3", "--nproc_per_node", "4", "--rdzv_backend", "c10d", "--rdzv_endpoint", "10.0.0.1:29600",
        "--rdzv_id", "r")


def test_several_nodes_without_a_rendezvous_host_fail_clearly(launch):
    code, _, err = launch({"NNODES": "2", "CUDA_VISIBLE_DEVICES": "0"})
    assert code == 2 and "NNODES=2 but no MASTER_ADDR" in err


@pytest.mark.parametrize("env,log_glob", [({}, "train-test-*[0-9].log"),
                                          ({"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "h0"},
                                           "train-test-*-node1.log")])
def test_a_real_launch_runs_both_commands_into_the_log(tmp_path, isolated_root, env, log_glob):
    """Without RANK1_PRINT_ONLY the launcher runs data preparation then training, teeing both into one log
    (a stand-in python records its arguments)."""
    fake_tool(tmp_path / "bin", "python", 'echo "ran: $*"')
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO_ROOT / "0_train_lora.sh"), "--profile", "test"], capture_output=True,
                          text=True, timeout=60, env={**clean, "PYTHON": str(tmp_path / "bin" / "python"),
                                                      "CUDA_VISIBLE_DEVICES": "", **env})
    assert proc.returncode == 0, proc.stderr
    (log,) = (isolated_root / "logs").glob(log_glob)
    ran = [line for line in log.read_text().splitlines() if line.startswith("ran: ")]
    assert ran[0] == f"ran: {REPO_ROOT / 's1_peft' / 'prepare_data.py'} --profile test"
    assert ran[1].endswith(f"{TRAIN_PY} --profile test")
