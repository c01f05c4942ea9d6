//! Loads every program of ferry's eBPF object through the kernel's
//! verifier and prints its instruction count: `cargo run --example
//! verify_programs` (root).
fn main() {
    let mut ebpf = aya::Ebpf::load(ferry::dataplane::OBJECT).expect("object loads");
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    let mut failed = 0;
    for n in names {
        let p = ebpf.program_mut(&n).unwrap();
        let r = match p {
            aya::programs::Program::SchedClassifier(c) => c.load(),
            aya::programs::Program::Xdp(x) => x.load(),
            _ => Ok(()),
        };
        match r {
            Ok(()) => println!("{n}: verified"),
            Err(e) => {
                failed += 1;
                let mut s = format!("{e:?}");
                s.truncate(4000);
                println!("{n}: REJECTED {s}");
            }
        }
    }
    std::process::exit(failed);
}
