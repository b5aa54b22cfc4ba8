//! Placeholder until its issue lands: exits with a clear message instead of
//! pretending to work.
fn main() {
    eprintln!("kamaitachi-gateway is not implemented yet (see the open issues)");
    std::process::exit(2);
}
