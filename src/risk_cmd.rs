//! Placeholder until the risk classifier's CLI lands (owned by the risk work).
#[derive(clap::Args)]
pub struct RiskArgs {
    #[arg(long)]
    json: bool,
    commands: Vec<String>,
}

pub fn run(args: RiskArgs) -> anyhow::Result<i32> {
    for c in &args.commands {
        let a = secureclaw_risk::classify_shell(c);
        println!("{}  {}  {c}", a.tier, a.rule);
    }
    let _ = args.json;
    Ok(0)
}
