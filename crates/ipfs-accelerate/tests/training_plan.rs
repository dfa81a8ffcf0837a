//! `plan-training`: the choice and its arithmetic, and the emitted DDP, FSDP and DeepSpeed
//! ZeRO-2 launch files run for real on the CPU (gloo, 2 processes, 20 steps), each rank's
//! measured peak memory within the plan's bound. PyTorch and DeepSpeed come from the reference
//! environment that scripts/test.sh sets up (scripts/setup_pyref.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A LLaMA architecture of about 27M parameters: big enough that its states dominate a
/// rank's memory, small enough to train on two CPU processes in seconds.
fn small_llama(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
        "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 8,
        "num_key_value_heads": 8, "vocab_size": 8000, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": false
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    model
}

/// LLaMA-7B's architecture (config only).
fn llama_7b(dir: &Path) -> PathBuf {
    let model = dir.join("llama-7b");
    std::fs::create_dir_all(&model).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
        "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    model
}

fn plan(args: &[&str]) -> serde_json::Value {
    let o = bin()
        .arg("plan-training")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The chosen candidate fits, and every candidate before it in the preference order (at any
/// micro-batch) does not: the cheapest that fits.
#[test]
fn the_cheapest_strategy_that_fits_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama_7b(dir.path());
    let m = model.to_str().unwrap();
    let v = plan(&[
        "--model",
        m,
        "--gpus",
        "8",
        "--gpu-memory-gb",
        "24",
        "--seq-len",
        "2048",
    ]);
    let chosen = &v["chosen"];
    assert_eq!(chosen["fits"], true, "{chosen}");
    assert!(chosen["gpu_bytes"].as_f64().unwrap() <= v["usable_bytes"].as_f64().unwrap());
    let key = |c: &serde_json::Value| {
        format!(
            "{}{}",
            c["strategy"].as_str().unwrap(),
            if c["activation_checkpointing"] == true {
                "+ckpt"
            } else {
                ""
            }
        )
    };
    let order: Vec<&str> = v["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    let rank = |c: &serde_json::Value| order.iter().position(|o| *o == key(c)).unwrap();
    for c in v["candidates"].as_array().unwrap() {
        if rank(c) < rank(chosen) {
            assert_eq!(
                c["fits"],
                false,
                "{} fits but {} was chosen",
                key(c),
                key(chosen)
            );
        }
    }
    // 7B parameters at 16 bytes each do not fit one 24 GiB GPU replicated.
    assert_ne!(chosen["strategy"], "ddp");

    // Eight 80 GiB GPUs hold it sharded without checkpointing; the explanation shows each term.
    let o = bin()
        .args([
            "plan-training",
            "--model",
            m,
            "--gpus",
            "8",
            "--gpu-memory-gb",
            "80",
            "--explain",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for term in [
        "parameters",
        "gradients",
        "optimizer",
        "activations",
        "usable",
    ] {
        assert!(text.contains(term), "{term} missing from:\n{text}");
    }

    // One 8 GiB GPU: nothing fits; the reason names the smallest need, exit non-zero.
    let o = bin()
        .args([
            "plan-training",
            "--model",
            m,
            "--gpus",
            "1",
            "--gpu-memory-gb",
            "2",
            "--seq-len",
            "4096",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothing fits"), "{}", stderr(&o));

    // Requests that make no plan: one line each.
    for (args, says) in [
        (
            vec![
                "--gpus",
                "3",
                "--gpu-memory-gb",
                "24",
                "--global-batch",
                "8",
            ],
            "does not divide",
        ),
        (vec!["--gpus", "1", "--gpu-memory-gb=0"], "GiB"),
        (
            vec![
                "--gpus",
                "1",
                "--gpu-memory-gb",
                "24",
                "--seq-len",
                "100000",
            ],
            "max_position_embeddings",
        ),
    ] {
        let o = bin()
            .args(["plan-training", "--model", m])
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}

/// `select --mode training` ranks the same plan: the strategies that fit first, in the
/// preference order, the first being plan-training's choice; the others with their need.
#[test]
fn select_in_training_mode_ranks_the_plans_strategies() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama_7b(dir.path());
    let m = model.to_str().unwrap();
    let sizes = ["--gpus", "8", "--gpu-memory-gb", "24", "--seq-len", "2048"];
    let o = bin()
        .args([
            "select",
            "--model",
            m,
            "--mode",
            "training",
            "--batch-size",
            "8",
            "--json",
        ])
        .args(sizes)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = out["strategies"].as_array().unwrap();
    assert_eq!(out["measurements"], serde_json::json!([]), "no store: none");
    let chosen = plan(&[&["--model", m][..], &sizes[..]].concat())["chosen"].clone();
    assert_eq!(rows[0]["rank"], 1);
    assert_eq!(rows[0]["strategy"], chosen["strategy"]);
    assert_eq!(
        rows[0]["activation_checkpointing"],
        chosen["activation_checkpointing"]
    );
    let first_excluded = rows.iter().position(|r| !r["excluded"].is_null()).unwrap();
    assert!(rows[first_excluded..].iter().all(|r| r["rank"].is_null()));
    let o = bin()
        .args(["select", "--model", m, "--mode", "training"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--gpus and --gpu-memory-gb"),
        "{}",
        stderr(&o)
    );
}

/// The Python of the reference environment (scripts/setup_pyref.sh), which has PyTorch.
fn torch_python() -> PathBuf {
    let cache = std::env::var_os("IPFS_ACCELERATE_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("ipfs-accelerate"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ipfs-accelerate")
        });
    let python = cache.join("pyref/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup_pyref.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

#[test]
fn emitted_ddp_fsdp_and_zero2_train_within_the_planned_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = small_llama(dir.path());
    for strategy in ["ddp", "fsdp-full", "zero2"] {
        let out = dir.path().join(strategy);
        let o = bin()
            .args([
                "plan-training",
                "--model",
                model.to_str().unwrap(),
                "--gpus",
                "2",
            ])
            .args([
                "--gpu-memory-gb",
                "4",
                "--seq-len",
                "128",
                "--global-batch",
                "4",
            ])
            .args(["--strategy", strategy, "--activation-checkpointing", "off"])
            .args(["--emit", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        for file in ["plan.json", "train.py", "launch.sh", "model/config.json"] {
            assert!(out.join(file).exists(), "{strategy}: {file} not written");
        }
        let launch = std::fs::read_to_string(out.join("launch.sh")).unwrap();
        let zero = strategy == "zero2";
        let launcher = match zero {
            true => "deepspeed --num_nodes 1 --num_gpus 2 train.py --deepspeed ds_config.json",
            false => "torchrun --nnodes 1 --nproc-per-node 2",
        };
        assert!(launch.contains(launcher), "{launch}");
        if zero {
            let ds: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("ds_config.json")).unwrap())
                    .unwrap();
            assert_eq!(ds["zero_optimization"]["stage"], 2);
            assert_eq!(ds["train_batch_size"], 4);
        }
        // launch.sh's launchers want GPUs; the same processes on the CPU: torchrun's
        // standalone rendezvous, gloo, DeepSpeed's CPU accelerator (its ops build with the
        // environment's ninja).
        let report = out.join("report.jsonl");
        let python = torch_python();
        let path = format!(
            "{}:{}",
            python.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(&python);
        cmd.args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
        ])
        .arg(out.join("train.py"))
        .args(["--device", "cpu", "--steps", "20", "--report"])
        .arg(&report)
        .env("OMP_NUM_THREADS", "1")
        .env("PATH", path)
        // torchrun's agent leaves its torchelastic_* folder in the temporary folder.
        .env("TMPDIR", dir.path());
        if zero {
            cmd.arg("--deepspeed").arg(out.join("ds_config.json"));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{strategy}: {}", stderr(&o));
        let ranks: Vec<serde_json::Value> = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(ranks.len(), 2, "{strategy}: one report per rank");
        for r in &ranks {
            let (peak, planned) = (
                r["peak_bytes"].as_f64().unwrap(),
                r["planned_bytes"].as_f64().unwrap(),
            );
            assert_eq!(r["steps"], 20);
            assert!(r["loss_last"].as_f64().unwrap().is_finite(), "{r}");
            // Within the bound, and not a bound so loose it says nothing.
            assert!(
                peak <= planned,
                "{strategy} rank {}: measured {peak} > planned {planned}",
                r["rank"]
            );
            assert!(
                peak >= 0.4 * planned,
                "{strategy} rank {}: measured {peak} vs planned {planned}",
                r["rank"]
            );
        }
    }
}
