//! Writes each target's seeds into DIR/<target>/ (the corpora scripts/fuzz.sh hands libFuzzer),
//! with the inputs in crates/ia-fuzz/regressions/<target>/.
//! Usage: cargo run --release -p ia-fuzz --example write_seeds -- DIR

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: write_seeds DIR"));
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (name, _) in ia_fuzz::TARGETS {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut inputs = ia_fuzz::seeds::seeds(name, &repo);
        ia_fuzz::seeds::files(
            &repo.join("crates/ia-fuzz/regressions").join(name),
            &|p| p.extension().is_none_or(|e| e != "md"),
            &mut inputs,
        );
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), input).unwrap();
        }
        println!("{name}: {} seeds", inputs.len());
    }
}
