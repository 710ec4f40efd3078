//! Entry point of `cargo xtask`.

fn main() -> std::process::ExitCode {
    xtask::cli::main()
}

// The explorer allocates small objects by the million; mimalloc makes that cheaper
// than glibc's malloc, and it changes nothing about what a run does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
