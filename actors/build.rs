//! Records the build's commit and date for the agent filesystem's `.manifest`
//! (`CCDBUILD_COMMIT`, `CCDBUILD_DATE`); "unknown" when git or date are not available.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CCDBUILD_COMMIT={commit}");
    println!("cargo:rustc-env=CCDBUILD_DATE={date}");
    // Only the commit is worth a rebuild; the date is that of the last build of this crate.
    // A commit changes the branch's ref (a loose file, or a line of packed-refs), not `HEAD`,
    // which only names the branch. Only files that exist are watched: Cargo reruns the script
    // on every build for a missing one.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(output("git", &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = output("git", &["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
