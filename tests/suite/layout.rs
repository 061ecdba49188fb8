//! The layout rule of `tests/tests.rs`, checked: a test file that would silently become a
//! binary of its own, or an area file that no `mod` line compiles (whose tests would never
//! run), fails here with the fix in the message.

use std::path::Path;

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");

/// Names of the `*.rs` files directly in `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".rs"))
        .collect();
    names.sort();
    names
}

#[test]
fn tests_rs_is_the_only_integration_test_binary() {
    let files = rust_files(Path::new(TESTS));
    assert_eq!(
        files,
        vec!["tests.rs".to_string()],
        "every file in tests/*.rs is a test binary of its own: move the others to \
         tests/suite/AREA.rs and add `mod AREA;` to tests/tests.rs (see its doc comment)"
    );
}

#[test]
fn every_area_file_is_a_module_of_the_suite() {
    let root = std::fs::read_to_string(Path::new(TESTS).join("tests.rs")).expect("tests/tests.rs");
    let declared: Vec<&str> = root
        .lines()
        .filter_map(|line| line.trim().strip_prefix("mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .collect();
    let missing: Vec<String> = rust_files(&Path::new(TESTS).join("suite"))
        .into_iter()
        .map(|file| file.trim_end_matches(".rs").to_string())
        .filter(|area| !declared.contains(&area.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/suite/ files that no `mod` line in tests/tests.rs compiles (their tests never \
         run): {missing:?}"
    );
}
