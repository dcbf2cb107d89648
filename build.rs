// The migrations are compiled into the binary (`sqlx::migrate!`): a change
// to one of them must rebuild it, though no Rust source changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
