//! Compiles every `cuda/*.cu` into one fatbin with nvcc and embeds the fatbins in the crate.
//!
//! The rules are docs/design.md's Build section: nvcc discovery order, the architecture list, one
//! fatbin per file (files named `*_sm90a.cu` get a fatbin of their own for sm_90a, files named
//! `*_probe.cu` are built only with the `probes` feature), the same
//! flags in every cargo profile, `TILEFUSE_REQUIRE_CUDA=1` and `DOCS_RS`. Compiled fatbins are
//! cached under the target directory by a hash of everything that goes into them, so debug,
//! release, clippy and doc builds compile each kernel once.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// SASS targets when `TILEFUSE_CUDA_ARCHS` is unset; PTX is added for the lowest one.
const DEFAULT_ARCHS: &[u32] = &[80, 86, 89, 90];
/// Kernel files whose name ends with this are built for sm_90a alone (wgmma, setmaxnreg).
const SM90A_SUFFIX: &str = "_sm90a";
/// Kernel files whose name ends with this hold benchmark-only probes, built only with the
/// `probes` feature (a fatbin of their own, which no op loads).
const PROBES_SUFFIX: &str = "_probe";
/// nvcc flags shared by every file and every cargo profile (never `-G`).
const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-lineinfo",
    "-std=c++17",
    "-t",
    "0",
    "-Xptxas",
    "-v",
];
const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_ROOT",
    "PATH",
    "TILEFUSE_CUDA_ARCHS",
    "NVCC_PREPEND_FLAGS",
    "NVCC_APPEND_FLAGS",
    "TILEFUSE_REQUIRE_CUDA",
    "DOCS_RS",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    for var in ENV_VARS {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(tilefuse_cuda_kernels)");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let build = build_kernels(&manifest_dir.join("cuda"), &out_dir);
    if let Build::Compiled { modules, .. } = &build
        && !modules.is_empty()
    {
        println!("cargo::rustc-cfg=tilefuse_cuda_kernels");
    }
    let generated = generated_module(&build);
    fs::write(out_dir.join("kernels.rs"), generated).expect("write kernels.rs to OUT_DIR");
    let cuda_dir = manifest_dir.join("cuda");
    let families = kernel_families(&cuda_dir);
    if let Build::Compiled { modules, .. } = &build {
        check_families_against_reports(&families, modules);
    }
    fs::write(out_dir.join("kernel_ids.rs"), kernel_ids(&families))
        .expect("write kernel_ids.rs to OUT_DIR");
}

/// A family of kernels that `cuda/abi.h` declares in one line (` * tilefuse_spmm_tiledcsl_{f16,
/// bf16}_n{8,16,32,64}_{same,f32}: ...`): one kernel per choice of every brace group.
struct Family {
    /// `cuda/<module>.cu` defines them: the longest file stem that the name after `tilefuse_`
    /// starts with.
    module: String,
    /// The Rust constant: the first word after the module (`TILEDCSL`), or the module's name
    /// when a brace group comes first (`SCAN`).
    constant: String,
    pattern: String,
    /// The choices of each brace group, in order.
    groups: Vec<Vec<String>>,
    /// Every name, the last group varying fastest.
    names: Vec<String>,
}

/// The kernel families of `cuda/abi.h`, the one place kernel names are written.
fn kernel_families(cuda_dir: &Path) -> Vec<Family> {
    let header = String::from_utf8(read(&cuda_dir.join("abi.h"))).expect("abi.h is UTF-8");
    let stems: Vec<String> = kernel_sources(cuda_dir)
        .iter()
        .map(|s| file_stem(s))
        .collect();
    let mut families: Vec<Family> = Vec::new();
    for line in header.lines() {
        let Some(pattern) = line
            .strip_prefix(" * ")
            .and_then(|rest| rest.split_once(": "))
            .map(|(pattern, _)| pattern)
            .filter(|p| p.starts_with("tilefuse_"))
        else {
            continue;
        };
        if pattern.contains(' ') {
            if pattern.contains('{') {
                panic!("abi.h: kernel family {pattern:?} has a space; write {{a,b}}");
            }
            continue; // prose that begins with a kernel's name
        }
        let rest = &pattern["tilefuse_".len()..];
        let module = stems
            .iter()
            .filter(|stem| rest.starts_with(&format!("{stem}_")))
            .max_by_key(|stem| stem.len())
            .unwrap_or_else(|| {
                panic!("abi.h: {pattern} names no cuda/*.cu file (tilefuse_<file stem>_...)")
            })
            .clone();
        let after = &rest[module.len() + 1..];
        let first_word = after.split(['_', '{']).next().unwrap_or_default();
        let constant = if first_word.is_empty() {
            &module
        } else {
            first_word
        }
        .to_uppercase();
        let (groups, names) = expand(pattern);
        if families
            .iter()
            .any(|f| f.module == module && f.constant == constant)
        {
            panic!("abi.h: two kernel families of cuda/{module}.cu are both named {constant}");
        }
        families.push(Family {
            module,
            constant,
            pattern: pattern.to_string(),
            groups,
            names,
        });
    }
    families
}

/// `a_{x,y}_b{1,2}` gives its groups `[[x, y], [1, 2]]` and `[a_x_b1, a_x_b2, a_y_b1, a_y_b2]`.
fn expand(pattern: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let mut groups = Vec::new();
    let mut names = vec![String::new()];
    let mut rest = pattern;
    while !rest.is_empty() {
        let (text, group) = match rest.find('{') {
            Some(open) => {
                let close = rest[open..]
                    .find('}')
                    .unwrap_or_else(|| panic!("abi.h: unclosed brace in {pattern}"));
                let group: Vec<String> = rest[open + 1..open + close]
                    .split(',')
                    .map(str::to_string)
                    .collect();
                let text = &rest[..open];
                rest = &rest[open + close + 1..];
                (text, Some(group))
            }
            None => (std::mem::take(&mut rest), None),
        };
        for name in &mut names {
            name.push_str(text);
        }
        if let Some(group) = group {
            names = names
                .iter()
                .flat_map(|name| group.iter().map(move |choice| format!("{name}{choice}")))
                .collect();
            groups.push(group);
        }
    }
    (groups, names)
}

/// Every kernel that nvcc compiled is declared in abi.h, and every declared kernel of a
/// compiled file exists: a kernel cannot be renamed, added or dropped on one side only.
fn check_families_against_reports(families: &[Family], modules: &[Module]) {
    for module in modules {
        let report = String::from_utf8_lossy(&read(&module.report)).into_owned();
        let mut compiled: Vec<&str> = report
            .lines()
            .filter_map(|line| line.split("Compiling entry function '").nth(1))
            .filter_map(|rest| rest.split('\'').next())
            .collect();
        compiled.sort_unstable();
        compiled.dedup();
        let mut declared: Vec<&str> = families
            .iter()
            .filter(|f| f.module == module.name)
            .flat_map(|f| f.names.iter().map(String::as_str))
            .collect();
        declared.sort_unstable();
        if let Some(twice) = declared.windows(2).find(|pair| pair[0] == pair[1]) {
            panic!("cuda/abi.h declares {} in two kernel families", twice[0]);
        }
        if compiled != declared {
            let missing: Vec<_> = declared.iter().filter(|n| !compiled.contains(n)).collect();
            let undeclared: Vec<_> = compiled.iter().filter(|n| !declared.contains(n)).collect();
            panic!(
                "cuda/{}.cu and cuda/abi.h disagree: declared in abi.h but not compiled: \
                 {missing:?}; compiled but not declared in abi.h: {undeclared:?}",
                module.name
            );
        }
    }
}

/// One Rust module per kernel file, one constant per family: a `Kernel`, or nested arrays of
/// them indexed by the brace groups in order.
fn kernel_ids(families: &[Family]) -> String {
    let mut out =
        String::from("// @generated by build.rs from cuda/abi.h: every kernel's typed id.\n");
    let mut modules: Vec<&str> = families.iter().map(|f| f.module.as_str()).collect();
    modules.sort_unstable();
    modules.dedup();
    for module in modules {
        writeln!(out, "/// The kernels of `cuda/{module}.cu`.").unwrap();
        writeln!(out, "#[allow(dead_code)]\npub(crate) mod {module} {{").unwrap();
        writeln!(out, "    use super::Kernel;").unwrap();
        for family in families.iter().filter(|f| f.module == module) {
            let ty = family
                .groups
                .iter()
                .rev()
                .fold("Kernel".to_string(), |inner, group| {
                    format!("[{inner}; {}]", group.len())
                });
            let mut names = family.names.iter();
            let value = nested(&family.groups, &mut names, module);
            let order: Vec<String> = family
                .groups
                .iter()
                .map(|g| format!("{{{}}}", g.join(", ")))
                .collect();
            writeln!(out, "    /// `{}`", family.pattern).unwrap();
            if !order.is_empty() {
                writeln!(
                    out,
                    "    ///\n    /// Indexed by {}, in that order.",
                    order.join(", ")
                )
                .unwrap();
            }
            writeln!(
                out,
                "    pub(crate) const {}: {ty} = {value};",
                family.constant
            )
            .unwrap();
        }
        writeln!(out, "}}").unwrap();
    }
    out
}

fn nested(groups: &[Vec<String>], names: &mut std::slice::Iter<String>, module: &str) -> String {
    match groups.split_first() {
        None => {
            let name = names.next().expect("one name per choice");
            format!("Kernel {{ module: {module:?}, name: {name:?} }}")
        }
        Some((group, rest)) => {
            let items: Vec<String> = group.iter().map(|_| nested(rest, names, module)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// What the build produced: compiled modules, or the reason there are none.
enum Build {
    Compiled {
        nvcc_version: String,
        targets: String,
        modules: Vec<Module>,
    },
    Unavailable(String),
}

struct Module {
    name: String,
    targets: String,
    fatbin: PathBuf,
    report: PathBuf,
}

fn build_kernels(cuda_dir: &Path, out_dir: &Path) -> Build {
    if env::var_os("DOCS_RS").is_some() {
        return Build::Unavailable("built on docs.rs, where kernels are not compiled".into());
    }
    let required = cuda_required();
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        if required {
            panic!("TILEFUSE_REQUIRE_CUDA=1 but the `cuda` feature of tilefuse is disabled");
        }
        return Build::Unavailable("tilefuse was built without the `cuda` feature".into());
    }
    let nvcc = match find_nvcc() {
        Ok(nvcc) => nvcc,
        Err(searched) => return no_nvcc(required, &format!("nvcc was not found ({searched})")),
    };
    let nvcc_version = match nvcc_version(&nvcc) {
        Ok(version) => version,
        Err(why) => return no_nvcc(required, &why),
    };
    let toolchain_hash = hash_toolchain(&nvcc, &nvcc_version);
    let archs = target_archs();
    let probes = env::var_os("CARGO_FEATURE_PROBES").is_some();
    let sources: Vec<PathBuf> = kernel_sources(cuda_dir)
        .into_iter()
        .filter(|source| probes || !file_stem(source).ends_with(PROBES_SUFFIX))
        .collect();
    let headers_hash = hash_headers(cuda_dir);
    let embed_dir = out_dir.join("kernels");
    fs::create_dir_all(&embed_dir).expect("create OUT_DIR/kernels");
    let cache_dir = writable_cache_dir(kernel_cache_dir(out_dir));

    let jobs: Vec<Job> = sources
        .iter()
        .filter_map(|source| Job::new(source, cuda_dir, &archs))
        .collect();
    let modules = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                scope.spawn(|| {
                    job.run(
                        &nvcc,
                        toolchain_hash ^ headers_hash,
                        cache_dir.as_deref(),
                        &embed_dir,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    Build::Compiled {
        nvcc_version,
        targets: describe_archs(&archs),
        modules,
    }
}

/// What identifies the compiler beyond `nvcc --version`: its path, the size and time of the
/// cicc it drives (a newer nvvm can come without a new nvcc), and nvcc's own flag variables.
fn hash_toolchain(nvcc: &Path, version: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    version.hash(&mut hasher);
    nvcc.hash(&mut hasher);
    if let Some(root) = nvcc.parent().and_then(Path::parent) {
        for cicc in ["nvvm/bin/cicc", "nvvm/bin/cicc.exe"] {
            if let Ok(meta) = fs::metadata(root.join(cicc)) {
                meta.len().hash(&mut hasher);
                meta.modified().ok().hash(&mut hasher);
            }
        }
    }
    for var in ["NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"] {
        env::var_os(var).hash(&mut hasher);
    }
    hasher.finish()
}

fn cuda_required() -> bool {
    match env::var("TILEFUSE_REQUIRE_CUDA").as_deref() {
        Err(_) | Ok("") | Ok("0") | Ok("false") | Ok("no") => false,
        Ok("1") | Ok("true") | Ok("yes") => true,
        Ok(other) => panic!("TILEFUSE_REQUIRE_CUDA must be 0 or 1, got {other:?}"),
    }
}

fn no_nvcc(required: bool, why: &str) -> Build {
    let advice = "install a CUDA toolkit or run scripts/install-nvcc.sh, then rebuild";
    if required {
        panic!("TILEFUSE_REQUIRE_CUDA=1 but {why}; {advice}");
    }
    println!("cargo::warning=tilefuse: CUDA kernels not built: {why}; {advice}");
    Build::Unavailable(format!(
        "this build of tilefuse has no CUDA kernels: {why} at build time; {advice}"
    ))
}

/// docs/design.md's discovery order: `NVCC`, then `CUDA_HOME` / `CUDA_PATH` / `CUDA_ROOT` +
/// `/bin/nvcc`, then `PATH`, then `/usr/local/cuda/bin/nvcc`. Err lists where it looked.
fn find_nvcc() -> Result<PathBuf, String> {
    let exe = format!("nvcc{}", env::consts::EXE_SUFFIX);
    if let Some(explicit) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&explicit);
        // A bare name (`NVCC=nvcc`) is looked up on PATH, like a shell would.
        let found = if path.components().count() == 1 {
            env::var_os("PATH").and_then(|p| {
                env::split_paths(&p)
                    .map(|d| d.join(&path))
                    .find(|c| c.is_file())
            })
        } else {
            Some(path).filter(|p| p.is_file())
        };
        return Ok(
            found.unwrap_or_else(|| panic!("NVCC is set to {explicit:?}, which is not a file"))
        );
    }
    let mut candidates = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(home) = env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(home).join("bin").join(&exe));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|dir| dir.join(&exe)));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin").join(&exe));
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        "looked at NVCC, CUDA_HOME, CUDA_PATH, CUDA_ROOT, PATH and /usr/local/cuda".into()
    })
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let output = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} could not be run ({e})", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --version` failed: {}",
            nvcc.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let release = stdout
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or(stdout.trim());
    Ok(release.trim().to_string())
}

/// `TILEFUSE_CUDA_ARCHS` (e.g. `80,90` or `sm_80 sm_90`) or the default list, sorted.
fn target_archs() -> Vec<u32> {
    let Ok(list) = env::var("TILEFUSE_CUDA_ARCHS") else {
        return DEFAULT_ARCHS.to_vec();
    };
    let mut archs: Vec<u32> = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            let digits = s.trim_start_matches("sm_").trim_start_matches("compute_");
            match digits.parse::<u32>() {
                Ok(arch) if (50..=200).contains(&arch) => arch,
                _ => panic!(
                    "TILEFUSE_CUDA_ARCHS: expected compute capabilities like `80,86,89,90`, \
                     got {s:?} in {list:?}"
                ),
            }
        })
        .collect();
    archs.sort_unstable();
    archs.dedup();
    if archs.is_empty() {
        panic!("TILEFUSE_CUDA_ARCHS is set but lists no architecture: {list:?}");
    }
    archs
}

fn describe_archs(archs: &[u32]) -> String {
    let sass: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
    format!("{} SASS + compute_{} PTX", sass.join(" "), archs[0])
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn kernel_sources(cuda_dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(cuda_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", cuda_dir.display()))
        .map(|entry| entry.expect("read cuda/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
}

/// A hash of every header under `cuda/` (names and contents), which any kernel may include.
fn hash_headers(cuda_dir: &Path) -> u64 {
    let mut files = Vec::new();
    collect_headers(cuda_dir, &mut files);
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.strip_prefix(cuda_dir)
            .unwrap_or(&file)
            .hash(&mut hasher);
        read(&file).hash(&mut hasher);
    }
    hasher.finish()
}

fn collect_headers(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("read cuda/ entry").path();
        if path.is_dir() {
            collect_headers(&path, files);
        } else if path
            .extension()
            .is_some_and(|e| e == "h" || e == "cuh" || e == "hpp" || e == "inl")
        {
            files.push(path);
        }
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `<target>/tilefuse-kernels`, found from OUT_DIR (`<target>/<profile>/build/<pkg>/out`), so
/// that every profile shares one cache.
fn kernel_cache_dir(out_dir: &Path) -> PathBuf {
    let target = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent()?.parent());
    target.unwrap_or(out_dir).join("tilefuse-kernels")
}

/// `dir` if fatbins can be written there; otherwise None (each build then compiles every
/// kernel), with a warning that says why.
fn writable_cache_dir(dir: PathBuf) -> Option<PathBuf> {
    let probe = dir.join(format!(".probe{}", std::process::id()));
    let writable = fs::create_dir_all(&dir).and_then(|()| fs::write(&probe, b""));
    let _ = fs::remove_file(&probe);
    match writable {
        Ok(()) => Some(dir),
        Err(e) => {
            println!(
                "cargo::warning=tilefuse: no kernel cache: {} cannot be written ({e}); \
                 kernels are compiled in every build",
                dir.display()
            );
            None
        }
    }
}

/// One nvcc invocation: a source file and its gencode flags.
struct Job {
    name: String,
    source: PathBuf,
    include_dir: PathBuf,
    gencodes: Vec<String>,
    targets: String,
}

impl Job {
    /// None when the file targets sm_90a and the architecture list leaves out 90.
    fn new(source: &Path, cuda_dir: &Path, archs: &[u32]) -> Option<Job> {
        let name = source.file_stem()?.to_string_lossy().into_owned();
        let (gencodes, targets) = if name.ends_with(SM90A_SUFFIX) {
            if !archs.contains(&90) {
                println!("cargo::warning=tilefuse: {name}.cu skipped: sm_90 is not in the list");
                return None;
            }
            (
                vec!["-gencode=arch=compute_90a,code=sm_90a".to_string()],
                "sm_90a SASS".to_string(),
            )
        } else {
            let mut gencodes: Vec<String> = archs
                .iter()
                .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
                .collect();
            gencodes.push(format!(
                "-gencode=arch=compute_{0},code=compute_{0}",
                archs[0]
            ));
            (gencodes, describe_archs(archs))
        };
        Some(Job {
            name,
            source: source.to_path_buf(),
            include_dir: cuda_dir.to_path_buf(),
            gencodes,
            targets,
        })
    }

    /// `inputs_hash` covers the toolchain and the headers; the key adds flags and source.
    fn cache_key(&self, inputs_hash: u64) -> String {
        let mut hasher = DefaultHasher::new();
        inputs_hash.hash(&mut hasher);
        NVCC_FLAGS.hash(&mut hasher);
        self.gencodes.hash(&mut hasher);
        read(&self.source).hash(&mut hasher);
        format!("{}-{:016x}", self.name, hasher.finish())
    }

    /// Compiles (or takes from the cache, where there is one) the fatbin and ptxas report
    /// into OUT_DIR.
    fn run(
        &self,
        nvcc: &Path,
        inputs_hash: u64,
        cache_dir: Option<&Path>,
        embed_dir: &Path,
    ) -> Module {
        let fatbin = embed_dir.join(format!("{}.fatbin", self.name));
        let report = embed_dir.join(format!("{}.ptxas.txt", self.name));
        match cache_dir {
            Some(cache_dir) => {
                let key = self.cache_key(inputs_hash);
                let cached_fatbin = cache_dir.join(format!("{key}.fatbin"));
                let cached_report = cache_dir.join(format!("{key}.ptxas.txt"));
                if !(cached_fatbin.is_file() && cached_report.is_file()) {
                    self.compile(nvcc, &cached_fatbin, &cached_report);
                }
                fs::copy(&cached_fatbin, &fatbin).expect("copy fatbin into OUT_DIR");
                fs::copy(&cached_report, &report).expect("copy ptxas report into OUT_DIR");
            }
            None => self.compile(nvcc, &fatbin, &report),
        }
        let report_text = String::from_utf8_lossy(&read(&report)).into_owned();
        warn_on_spills(&self.name, &report_text);
        for warning in report_text.lines().filter(|l| l.contains("warning")) {
            println!("cargo::warning=tilefuse: cuda/{}.cu: {warning}", self.name);
        }
        Module {
            name: self.name.clone(),
            targets: self.targets.clone(),
            fatbin,
            report,
        }
    }

    fn compile(&self, nvcc: &Path, fatbin: &Path, report: &Path) {
        // Write under unique names and rename, so concurrent builds never see half a file.
        let tmp = fatbin.with_extension(format!("tmp{}", std::process::id()));
        let tmp_report = report.with_extension(format!("tmp{}", std::process::id()));
        let mut command = Command::new(nvcc);
        command
            .args(NVCC_FLAGS)
            .args(&self.gencodes)
            .arg("-I")
            .arg(&self.include_dir)
            .arg("-o")
            .arg(&tmp)
            .arg(&self.source);
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let _ = fs::remove_file(&tmp);
            panic!(
                "nvcc failed on {} ({})\ncommand: {command:?}\n{stderr}{}",
                self.source.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout)
            );
        }
        fs::write(&tmp_report, stderr.as_bytes()).expect("write ptxas report");
        fs::rename(&tmp_report, report).expect("move ptxas report into place");
        fs::rename(&tmp, fatbin).expect("move fatbin into place");
    }
}

/// One build warning per kernel file whose ptxas report shows spills or a stack frame;
/// `tilefuse info --ptxas` prints the details.
fn warn_on_spills(name: &str, report: &str) {
    let spilling = report.lines().any(|line| {
        line.contains("bytes spill stores")
            && line
                .split(',')
                .any(|part| part.contains("spill") && !part.trim_start().starts_with("0 "))
    });
    if spilling {
        println!(
            "cargo::warning=tilefuse: ptxas reports register spills in cuda/{name}.cu \
             (run `tilefuse info --ptxas`)"
        );
    }
}

fn generated_module(build: &Build) -> String {
    let mut out =
        String::from("// @generated by build.rs: the CUDA kernels embedded in this build.\n");
    match build {
        Build::Unavailable(reason) => {
            writeln!(out, "pub(crate) const NVCC_VERSION: Option<&str> = None;").unwrap();
            writeln!(out, "pub(crate) const TARGETS: &str = \"\";").unwrap();
            writeln!(
                out,
                "pub(crate) const UNAVAILABLE: Option<&str> = Some({reason:?});"
            )
            .unwrap();
            writeln!(out, "pub(crate) const MODULES: &[EmbeddedModule] = &[];").unwrap();
        }
        Build::Compiled {
            nvcc_version,
            targets,
            modules,
        } => {
            writeln!(
                out,
                "pub(crate) const NVCC_VERSION: Option<&str> = Some({nvcc_version:?});"
            )
            .unwrap();
            writeln!(out, "pub(crate) const TARGETS: &str = {targets:?};").unwrap();
            writeln!(out, "pub(crate) const UNAVAILABLE: Option<&str> = None;").unwrap();
            writeln!(out, "pub(crate) const MODULES: &[EmbeddedModule] = &[").unwrap();
            for m in modules {
                writeln!(
                    out,
                    "    EmbeddedModule {{ name: {:?}, targets: {:?}, image: include_bytes!({:?}), \
                     ptxas_report: include_str!({:?}) }},",
                    m.name,
                    m.targets,
                    m.fatbin.display().to_string(),
                    m.report.display().to_string(),
                )
                .unwrap();
            }
            writeln!(out, "];").unwrap();
        }
    }
    out
}
