//! `tidegate filter new NAME`: scaffolds a filter crate that builds with tidegate-sdk.
//!
//! The crate it writes (templates in `scaffold/`):
//!
//! | file | what |
//! |---|---|
//! | `Cargo.toml` | a `cdylib` depending on `<tidegate>/sdk` (and `<tidegate>/sdk/testing` for tests), a small `panic = "abort"` release profile, and an empty `[workspace]` so it builds anywhere |
//! | `src/lib.rs` | a useful filter: denies requests missing a configured header, adds a configured response header |
//! | `tests/filter.rs` | `#[test]`s that run the compiled `.wasm` in tidegate's host (tidegate-testing) |
//! | `wasmfilter.yaml` | a WasmFilter attaching the module to the quickstart Gateway |
//! | `README.md`, `.gitignore` | |
//! | `rust-toolchain.toml` | a copy of the tidegate checkout's (same compiler, and rustup adds `wasm32-wasip1`) |
//! | `Cargo.lock` | a copy of the checkout's, so dependencies resolve to the versions tidegate is tested with |
//!
//! NAME must be a lowercase crate name (`[a-z][a-z0-9_-]*`): it is also the WasmFilter's
//! `metadata.name` (with `_` as `-`), which Kubernetes wants lowercase.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::FilterNewArgs;

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("scaffold/lib.rs.tmpl");
const FILTER_RS: &str = include_str!("scaffold/filter.rs.tmpl");
const README_MD: &str = include_str!("scaffold/README.md.tmpl");
const GITIGNORE: &str = include_str!("scaffold/gitignore.tmpl");
const WASMFILTER_YAML: &str = include_str!("scaffold/wasmfilter.yaml.tmpl");

/// The longest NAME accepted (crates.io's limit).
const MAX_NAME: usize = 64;

/// Names that cannot be a package: Rust keywords, the sysroot crates, and the crates the
/// scaffolded crate depends on (a package cannot depend on a crate of its own name).
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "core",
    "std",
    "alloc",
    "proc_macro",
    "proc-macro",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
    "tidegate",
    "tidegate-sdk",
    "tidegate_sdk",
    "tidegate-testing",
    "tidegate_testing",
    "serde",
    "serde_json",
    "serde-json",
    "proxy-wasm",
    "proxy_wasm",
    "log",
];

/// What `tidegate filter new` was asked for, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The crate name (`hello-filter`).
    pub name: String,
    /// The directory to create.
    pub dir: PathBuf,
    /// The tidegate checkout whose `sdk/` the crate depends on (canonical).
    pub tidegate: PathBuf,
}

/// Runs `tidegate filter new`: writes the crate and prints what to do next.
pub fn new_filter(args: &FilterNewArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(args)?;
    write_crate(&plan)?;
    let mut out = std::io::stdout().lock();
    let shown = plan.dir.display();
    let _ = writeln!(
        out,
        "Created the filter crate `{name}` in {shown}\n\n\
         Next:\n\
         \x20 cd {shown}\n\
         \x20 cargo test                                     # the filter in tidegate's real host (the first run builds tidegate: a few minutes)\n\
         \x20 cargo build --target wasm32-wasip1 --release   # → target/wasm32-wasip1/release/{crate_name}.wasm\n\n\
         Then copy wasmfilter.yaml next to the quickstart config and run `tidegate run --config-dir`:\n\
         the guide is {guide}",
        name = plan.name,
        crate_name = plan.name.replace('-', "_"),
        guide = plan.tidegate.join("sdk/README.md").display(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Validates the arguments: the name, that the directory does not exist, and the checkout.
pub fn plan(args: &FilterNewArgs) -> anyhow::Result<Plan> {
    validate_name(&args.name)?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() || dir.symlink_metadata().is_ok() {
        anyhow::bail!(
            "{} already exists; `tidegate filter new` never overwrites a directory: choose another NAME or --dir",
            dir.display()
        );
    }
    let tidegate = match &args.tidegate_path {
        Some(path) => path.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let tidegate = tidegate.canonicalize().with_context(|| {
        format!(
            "--tidegate-path {}: not found; pass the tidegate checkout that holds sdk/",
            tidegate.display()
        )
    })?;
    for needed in ["sdk/Cargo.toml", "sdk/testing/Cargo.toml"] {
        if !tidegate.join(needed).is_file() {
            anyhow::bail!(
                "--tidegate-path {}: there is no {needed} in it; pass the tidegate checkout (the directory with sdk/ and runtime/)",
                tidegate.display()
            );
        }
    }
    Ok(Plan {
        name: args.name.clone(),
        dir,
        tidegate,
    })
}

/// Checks that `name` can be a crate name and a WasmFilter name.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "`{name}` is not a valid filter name: {why}. Use a lowercase crate name such as `hello-filter` \
             (letters, digits, `-` and `_`, starting with a letter)"
        )
    };
    let Some(first) = name.chars().next() else {
        return Err(bad("it is empty"));
    };
    if !first.is_ascii_lowercase() {
        return Err(bad("it must start with a lowercase letter"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(bad(&format!("{c:?} is not allowed")));
    }
    if name.len() > MAX_NAME {
        return Err(bad(&format!("it is longer than {MAX_NAME} characters")));
    }
    if name.ends_with(['-', '_']) {
        return Err(bad("it must end with a letter or digit"));
    }
    if RESERVED.contains(&name) {
        return Err(bad("it is a Rust keyword or a reserved crate name"));
    }
    Ok(())
}

/// The files of the crate, as (relative path, contents).
pub fn render(plan: &Plan) -> Vec<(&'static str, String)> {
    let dir = absolute(&plan.dir);
    let crate_name = plan.name.replace('-', "_");
    let wasm_path = dir
        .join("target/wasm32-wasip1/release")
        .join(format!("{crate_name}.wasm"));
    let vars: [(&str, String); 7] = [
        ("{{name}}", plan.name.clone()),
        ("{{crate}}", crate_name.clone()),
        ("{{object_name}}", plan.name.replace('_', "-")),
        ("{{sdk_path}}", toml_string(&plan.tidegate.join("sdk"))),
        ("{{testing_path}}", toml_string(&plan.tidegate.join("sdk/testing"))),
        ("{{wasm_path}}", yaml_string(&wasm_path)),
        (
            "{{guide_path}}",
            plan.tidegate.join("sdk/README.md").display().to_string(),
        ),
    ];
    let fill = |template: &str| {
        vars.iter()
            .fold(template.to_string(), |text, (key, value)| text.replace(key, value))
    };
    let mut files = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("tests/filter.rs", fill(FILTER_RS)),
        ("README.md", fill(README_MD)),
        (".gitignore", fill(GITIGNORE)),
        ("wasmfilter.yaml", fill(WASMFILTER_YAML)),
    ];
    // Same compiler as the checkout (rustup also installs the wasm32-wasip1 target it lists),
    // and the dependency versions tidegate is tested with.
    for (file, name) in [
        ("rust-toolchain.toml", "rust-toolchain.toml"),
        ("Cargo.lock", "Cargo.lock"),
    ] {
        if let Ok(text) = std::fs::read_to_string(plan.tidegate.join(file)) {
            files.push((name, text));
        }
    }
    files
}

fn write_crate(plan: &Plan) -> anyhow::Result<()> {
    if let Some(parent) = plan.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // `create_dir` (not `_all`) fails if the directory appeared meanwhile: never overwrite.
    std::fs::create_dir(&plan.dir).with_context(|| format!("creating {}", plan.dir.display()))?;
    for (path, text) in render(plan) {
        let path = plan.dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.display().to_string().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path` as a YAML double-quoted scalar (a JSON string is one).
fn yaml_string(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, dir: &Path) -> FilterNewArgs {
        FilterNewArgs {
            name: name.to_string(),
            dir: Some(dir.to_path_buf()),
            tidegate_path: None,
        }
    }

    #[test]
    fn names_must_be_lowercase_crate_names() {
        for good in ["hello", "hello-filter", "auth_v2", "a1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "1st",
            "-x",
            "x-",
            "hello filter",
            "héllo",
            "a.b",
            "fn",
            "std",
            "tidegate-sdk",
        ] {
            let error = validate_name(bad).expect_err(bad).to_string();
            assert!(
                error.contains("hello-filter"),
                "the error suggests a valid name: {error}"
            );
        }
        assert!(validate_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn refuses_an_existing_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = plan(&args("hello", dir.path())).expect_err("exists").to_string();
        assert!(error.contains("already exists"), "{error}");
        let empty_file = dir.path().join("file");
        std::fs::write(&empty_file, "").expect("write");
        assert!(plan(&args("hello", &empty_file)).is_err());
    }

    #[test]
    fn refuses_a_checkout_without_the_sdk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut a = args("hello", &dir.path().join("hello"));
        a.tidegate_path = Some(dir.path().to_path_buf());
        let error = plan(&a).expect_err("no sdk").to_string();
        assert!(error.contains("sdk/Cargo.toml"), "{error}");
    }

    #[test]
    fn writes_a_complete_crate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("nested/hello_filter");
        let plan = plan(&args("hello_filter", &target)).expect("valid");
        assert_eq!(
            plan.tidegate,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
        );
        write_crate(&plan).expect("written");
        for file in [
            "Cargo.toml",
            "src/lib.rs",
            "tests/filter.rs",
            "README.md",
            ".gitignore",
            "wasmfilter.yaml",
            "rust-toolchain.toml",
            "Cargo.lock",
        ] {
            assert!(target.join(file).is_file(), "{file}");
        }
        let cargo = std::fs::read_to_string(target.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"hello_filter\""));
        assert!(cargo.contains(&format!("path = \"{}\"", plan.tidegate.join("sdk").display())));
        assert!(cargo.contains("crate-type = [\"cdylib\"]") && cargo.contains("panic = \"abort\""));
        assert!(cargo.trim_end().ends_with("[workspace]"));
        let lib = std::fs::read_to_string(target.join("src/lib.rs")).unwrap();
        assert!(lib.contains("`hello_filter`: a tidegate filter") && !lib.contains("{{name}}"));
        assert!(lib.contains("proxy_wasm::main! {{"), "the macro's own braces are kept");

        let yaml = std::fs::read_to_string(target.join("wasmfilter.yaml")).unwrap();
        let object: serde_json::Value = serde_yaml::from_str(&yaml).expect("wasmfilter.yaml is YAML");
        assert_eq!(object["kind"], "WasmFilter");
        assert_eq!(
            object["metadata"]["name"], "hello-filter",
            "Kubernetes names have no `_`"
        );
        assert_eq!(
            object["spec"]["config"],
            serde_json::json!({"header": "x-hello", "value": "world"})
        );
        let file = object["spec"]["module"]["file"].as_str().expect("file");
        assert_eq!(
            Path::new(file),
            std::path::absolute(&target)
                .unwrap()
                .join("target/wasm32-wasip1/release/hello_filter.wasm")
        );
        let spec: crate::config::wasmfilter::WasmFilterSpec =
            serde_json::from_value(object["spec"].clone()).expect("a valid WasmFilter spec");
        assert_eq!(spec.priority, 0);

        let again = plan_again(&target);
        assert!(again.is_err(), "a second run refuses the directory");
    }

    fn plan_again(target: &Path) -> anyhow::Result<Plan> {
        plan(&args("hello_filter", target))
    }

    #[test]
    fn strings_are_quoted() {
        assert_eq!(toml_string(Path::new(r#"/a "b"\c"#)), r#""/a \"b\"\\c""#);
        assert_eq!(yaml_string(Path::new("/a b/c.wasm")), r#""/a b/c.wasm""#);
    }
}
