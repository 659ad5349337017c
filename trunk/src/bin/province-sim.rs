//! `province-sim`: the province-size trunk simulation in virtual time (1 province, 11 cities,
//! 90 counties, 1,360 townships; 20 ms per hop), printed as a Markdown report.
//!
//! Usage: `province-sim [--seed N] [--streams N] [--viewers N] [--media-ms N] [--detect-ms N]`

use std::time::{Duration, Instant};

use trunk::sim::{province_run, ProvinceParams};

fn main() {
    let mut p = ProvinceParams::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|s| s.parse::<u64>().ok());
        let Some(v) = v else {
            eprintln!("usage: province-sim [--seed N] [--streams N] [--viewers N] [--media-ms N] [--detect-ms N]");
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--seed" => p.seed = v,
            "--streams" => p.streams = v as usize,
            "--viewers" => p.viewers = v as usize,
            "--media-ms" => p.sim.media_interval = Duration::from_millis(v.max(1)),
            "--detect-ms" => p.sim.detect_delay = Duration::from_millis(v),
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let wall = Instant::now();
    let r = province_run(&p);
    let wall = wall.elapsed();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    println!("nodes {} · streams {} · viewers {} (served {}, failed {}) · seed {} · hop {} ms · media every {} ms · detect {} ms",
        r.nodes, p.streams, p.viewers, r.viewers_served, r.viewers_failed, p.seed,
        ms(p.sim.hop_delay), ms(p.sim.media_interval), ms(p.sim.detect_delay));
    println!();
    println!("| hops | viewers | subscribe→Flowing p50 / p99 / max ms | subscribe→first packet p50 / p99 / max ms |");
    println!("|---:|---:|---|---|");
    for row in &r.setup {
        println!(
            "| {} | {} | {} / {} / {} | {} / {} / {} |",
            row.hops,
            row.viewers,
            ms(row.control[0]),
            ms(row.control[1]),
            ms(row.control[2]),
            ms(row.media[0]),
            ms(row.media[1]),
            ms(row.media[2])
        );
    }
    println!();
    println!("- cut {}–{}: {} viewers on paths through it; longest gap {} ms; moving back: longest gap {} ms, routes as before: {}",
        r.cut.0, r.cut.1, r.failover_viewers, ms(r.failover_max_gap), ms(r.move_back_max_gap), r.moved_back);
    println!("- prune: trunk packets in the last second of grace {}, from 1 s to 3 s after it {}; streams with state left {}",
        r.packets_before_grace_end, r.packets_after_prune, r.leftover_state);
    println!("- peak trunk flows {}; trunk packets {}; duplicates on a trunk direction {}; off-route {}; repeated after a switch {}; unwanted {}",
        r.peak_trunk_flows, r.stats.trunk_packets, r.stats.duplicates, r.stats.off_route, r.stats.repeated, r.stats.unwanted);
    println!("- control messages {} ({} bytes); publisher keyframe requests {}; events {}; wall time {:.1} s",
        r.stats.control_messages, r.stats.control_bytes, r.stats.publisher_keyframes, r.stats.events, wall.as_secs_f64());
}
