//! Named failure points (meilisearch style) for crash tests. With the `failpoints`
//! feature, `AOB_FAILPOINTS=name[,name…]` makes the process abort the first time
//! execution reaches `name`, simulating kill -9 at that exact step. Without the
//! feature the macro compiles to nothing.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("AOB_FAILPOINTS").map(|v| v.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default()
    });
    if armed.iter().any(|a| a == name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}

#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}
