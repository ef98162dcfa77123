//! `cargo run --release --example bench_train -- SHAPE BATCH SEQ RANK`: one LoRA SFT speed
//! measurement as JSON, without the CLI (for quick GPU runs). `lift bench train` is the
//! user-facing command.

fn main() -> lift_engine::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let shape = arg(1, "smollm2-135m");
    let batch: usize = arg(2, "4").parse().expect("batch is a number");
    let seq: usize = arg(3, "256").parse().expect("seq is a number");
    let rank: usize = arg(4, "128").parse().expect("rank is a number");
    let result = lift_engine::bench::bench_train(
        &shape,
        batch,
        seq,
        rank,
        2.0 * rank as f64,
        20,
        5,
        &lift_engine::default_device(),
    )?;
    println!("{}", serde_json::to_string(&result).expect("serializable"));
    Ok(())
}
