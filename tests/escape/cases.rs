// The sandbox escape battery, as data shared by both runners:
// - `sandbox/tests/escape_native.rs` runs every case through the `Sandbox` trait (native,
//   docker and host backends), and
// - `tests/cli/escape.rs` runs every case as a workflow step through the real `secureclaw` binary;
// `harness.rs` is the fixture both use and the judge both apply.
//
// Each case is a real attack in `sh`. A case reports that the attack SUCCEEDED by leaving
// evidence the runner checks from the host afterwards:
// - the file `PWNED` in the workspace (scripts end with `&& touch PWNED`),
// - any change in the canary directory outside the workspace ({OUT}: planted files changed,
//   new files appeared),
// - a connection accepted by the host loopback listener on {PORT},
// - a file left in the workspace with a setuid/setgid bit, a file capability
//   (`security.capability`), or a device node.
//
// A case must also prove that it attacked. Every step starts with a prologue the harness adds:
// a tool probe (each program in `tools` exists in that backend, or the step exits 97 saying
// which is missing) and a control write (a file in the workspace is written and read back, its
// text printed). Then each case declares what "blocked" looks like (`blocked`): the error the
// policy answers with (read from the step's stderr), the limit that ended the step, or the text
// a step prints when its attack ran and found nothing to take. A case stopped for any other
// reason (a missing tool, a read-only workspace, a typo) fails the battery.
//
// On `host`, every host-safe case must succeed (when the tests run as root, as they do here and
// in CI): the attack is real. The exceptions are declared: `host_enforces` (timeouts are kept by
// every backend, so on host the step must end with the same limit) and `host_needs` (a device
// the host kernel may lack, e.g. /dev/mem without CONFIG_DEVMEM; the runner says when it is
// absent).
//
// Placeholders: {OUT} canary dir (absolute host path, sibling of the workspace, reachable as
// `../outside` from it), {STATE} an engine state dir outside the workspace (with a planted key),
// {PORT} the host loopback listener, {TOKEN} a secret in the environment of another running
// step, {HOSTPID} a host process outside the sandbox (cwd {OUT}, {HOSTTOKEN} in its
// environment), {BLOCKDEV} a readable host block device (a loop device over a scratch file).
//
// Attacks stay harmless on the host backend: reads only, writes are cleaned up or land in the
// throwaway tree, syscalls use process-private objects, and nothing is sent off the machine
// (cases that would are `host_safe: false` and only run on isolating backends).

/// strerror texts, as glibc and musl print them (perl's `$!`, busybox, coreutils).
#[allow(dead_code)]
pub const EPERM: &str = "Operation not permitted";
#[allow(dead_code)]
pub const EACCES: &str = "Permission denied";
#[allow(dead_code)]
pub const ENOENT: &str = "No such file or directory";
/// The shells' words for ENOENT when a redirection's directory does not exist (dash, busybox).
#[allow(dead_code)]
pub const ENOENT_DASH: &str = "Directory nonexistent";
#[allow(dead_code)]
pub const ENOENT_BUSYBOX: &str = "nonexistent directory";
#[allow(dead_code)]
pub const ENOSYS: &str = "Function not implemented";
#[allow(dead_code)]
pub const EROFS: &str = "Read-only file system";
#[allow(dead_code)]
pub const ENOSPC: &str = "No space left on device";
#[allow(dead_code)]
pub const EAGAIN: &str = "Resource temporarily unavailable";
#[allow(dead_code)]
pub const ECONNREFUSED: &str = "Connection refused";
#[allow(dead_code)]
pub const ENETUNREACH: &str = "unreachable";
/// gVisor's network stack answers an address it has no route to with EHOSTUNREACH.
#[allow(dead_code)]
pub const EHOSTUNREACH: &str = "No route to host";
/// gVisor's kernel has no `security.*` extended attributes at all.
#[allow(dead_code)]
pub const EOPNOTSUPP: &str = "Operation not supported";

/// A syscall the seccomp policy refuses (or a capability the step does not hold).
const POLICY: &[&str] = &[EPERM, ENOSYS];
/// A host path the step must not reach: hidden (not mounted, masked), not ours, or read-only.
const UNREACHABLE: &[&str] = &[ENOENT, ENOENT_DASH, ENOENT_BUSYBOX, EACCES, EPERM, EROFS];

/// A limit the backend enforces by ending the step.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    Memory,
    DiskBudget,
}

/// What "blocked" looks like for a case on an isolating backend.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub enum Blocked {
    /// The attack's system call was refused: the step's stderr names one of these errors.
    Error(&'static [&'static str]),
    /// The backend ended the step for this reason.
    Limit(Limit),
    /// Nothing refuses the attack with an error: it runs and finds nothing to take (another
    /// step's environment, a hidden directory) or is killed with the sandbox (a daemon). The
    /// step succeeds and its output contains this text, which the script prints only once the
    /// attack has really run.
    Ran(&'static str),
}

#[allow(dead_code)]
pub struct Case {
    pub id: &'static str,
    pub what: &'static str,
    pub script: &'static str,
    /// Programs the attack needs: probed in the same backend before the attack is judged.
    pub tools: &'static [&'static str],
    pub blocked: Blocked,
    /// Step timeout in milliseconds.
    pub timeout_ms: u64,
    pub memory_mib: u64,
    pub pids: u32,
    /// Write budget in MiB (0: the backend's default).
    pub disk_mib: u64,
    /// How long to keep looking for evidence after the step (late daemons): the runner polls
    /// until evidence shows or this deadline passes.
    pub settle_ms: u64,
    /// Run a second step holding {TOKEN} in its environment while this one runs.
    pub other_step: bool,
    /// The engine's state dir is the default one inside the workspace (`.secureclaw`, with a
    /// `vault.header.json`), which the step must not see.
    pub state_in_workspace: bool,
    /// False when running the attack unconfined could send traffic off the machine or fill
    /// the host disk.
    pub host_safe: bool,
    /// The host backend enforces this case's limit too (timeouts): on host the step must end
    /// with the `blocked` limit instead of leaving evidence.
    pub host_enforces: bool,
    /// A host path the attack needs that some kernels do not have; where it is absent the
    /// host runner reports the case as not applicable instead of requiring it.
    pub host_needs: &'static str,
    /// What the attack leaves (a set-id bit, a file capability, a device node) is refused by
    /// the engine's capture after every step, on `host` too: through the binary on `host` the
    /// attack must work inside the step and the engine must fail the step and leave nothing.
    pub engine_sweeps: bool,
}

#[allow(dead_code)]
const fn case(
    id: &'static str,
    what: &'static str,
    tools: &'static [&'static str],
    blocked: Blocked,
    script: &'static str,
) -> Case {
    Case {
        id,
        what,
        script,
        tools,
        blocked,
        timeout_ms: 10_000,
        memory_mib: 256,
        pids: 64,
        disk_mib: 0,
        settle_ms: 0,
        other_step: false,
        state_in_workspace: false,
        host_safe: true,
        host_enforces: false,
        host_needs: "",
        engine_sweeps: false,
    }
}

/// A plant the engine's capture refuses after the step, whatever the backend.
#[allow(dead_code)]
const fn plant(
    id: &'static str,
    what: &'static str,
    tools: &'static [&'static str],
    script: &'static str,
) -> Case {
    Case {
        engine_sweeps: true,
        ..case(id, what, tools, Blocked::Error(&[EPERM]), script)
    }
}

const PERL: &[&str] = &["perl"];
const NONE: &[&str] = &[];

#[allow(dead_code)]
pub const CASES: &[Case] = &[
    // --- writing outside the workspace ---
    case("write-absolute", "write a file outside the workspace by absolute path", NONE,
        Blocked::Error(UNREACHABLE),
        "echo x > {OUT}/abs && touch PWNED"),
    case("write-dotdot", "escape the workspace with ..", NONE,
        Blocked::Error(UNREACHABLE),
        "echo x > ../outside/dotdot && touch PWNED"),
    case("write-symlink", "symlink in the workspace pointing outside, write through it", &["ln"],
        Blocked::Error(UNREACHABLE),
        "ln -s {OUT} lnk && echo x > lnk/symlink && touch PWNED"),
    case("write-hardlink", "hardlink a file outside into the workspace and modify it", &["ln"],
        Blocked::Error(&[ENOENT, EACCES, EPERM, EROFS, "Invalid cross-device link"]),
        "ln {OUT}/secret.txt hl && echo tampered >> hl && touch PWNED"),
    case("write-proc-self-root", "write through /proc/self/root", NONE,
        Blocked::Error(UNREACHABLE),
        "echo x > /proc/self/root{OUT}/procroot && touch PWNED"),
    case("write-proc-pid-cwd", "write through /proc/<pid>/cwd of a host process", NONE,
        Blocked::Error(UNREACHABLE),
        "echo x > /proc/{HOSTPID}/cwd/proccwd && touch PWNED"),
    case("write-system-dir", "modify a system directory (/usr)", &["touch"],
        Blocked::Error(&[EROFS, EACCES, EPERM]),
        "touch /usr/.secureclaw-escape && rm -f /usr/.secureclaw-escape && touch PWNED"),
    // ENOENT: gVisor's kernel has no such sysctl to read or write.
    case("write-sysctl", "write a global sysctl (same value back)", NONE,
        Blocked::Error(&[EROFS, EACCES, EPERM, ENOENT]),
        "v=$(cat /proc/sys/vm/overcommit_ratio) && echo \"$v\" > /proc/sys/vm/overcommit_ratio && touch PWNED"),
    case("git-hooks", "plant a git hook in the workspace's .git", NONE,
        Blocked::Error(&[EROFS, EACCES, EPERM]),
        "echo 'echo evil' > .git/hooks/pre-commit && touch PWNED"),
    // --- reading host secrets ---
    case("read-shadow", "read /etc/shadow", &["cat"],
        Blocked::Error(&[EACCES, ENOENT, EPERM]),
        "cat /etc/shadow > /dev/null && touch PWNED"),
    case("read-ssh-key", "read a private key outside the workspace (~/.ssh stand-in)", &["cat"],
        Blocked::Error(UNREACHABLE),
        "cat {OUT}/ssh/id_ed25519 > /dev/null && touch PWNED"),
    case("read-state-dir", "read the engine's state dir (vault key)", &["cat"],
        Blocked::Error(UNREACHABLE),
        "cat {STATE}/vault.key > /dev/null && touch PWNED"),
    case("read-host-proc-environ", "read a host process's environment through /proc", &["grep"],
        Blocked::Error(UNREACHABLE),
        "grep -qa '{HOSTTOKEN}' /proc/{HOSTPID}/environ && touch PWNED"),
    // Runners give every attack step SECURECLAW_CASE_SELF=1: when pid 1 is the step itself
    // (a container's entrypoint) or an init carrying the step's own environment, reading it
    // reveals nothing; any other pid 1 (a sandbox supervisor) must stay unreadable. Not run on
    // host: there pid 1 is the machine's own init, not ours to read.
    Case { host_safe: false, ..case("read-proc1-environ", "read pid 1's environment (when pid 1 is not the step itself)", &["grep", "tr"],
        Blocked::Error(&["pid 1 is the step itself", EACCES, EPERM, ENOENT]),
        "if grep -qa SECURECLAW_CASE_SELF=1 /proc/1/environ; then echo 'pid 1 is the step itself' >&2; exit 1; fi; tr '\\0' '\\n' < /proc/1/environ | grep -q = && touch PWNED") },
    Case { other_step: true, ..case("read-other-step-env", "read another running step's environment via /proc", &["grep", "sleep"],
        Blocked::Ran("scanned /proc for 4 s"),
        "i=0; while [ $i -lt 20 ]; do if grep -qa '{TOKEN}' /proc/[0-9]*/environ 2>/dev/null; then touch PWNED; break; fi; sleep 0.2; i=$((i+1)); done; echo 'scanned /proc for 4 s'") },
    // --- privilege and exec tricks ---
    case("exec-from-tmp", "drop a binary into /tmp and run it", &["cp", "perl"],
        Blocked::Error(&[EACCES, EPERM]),
        "f=/tmp/sc-exec-$$; cp \"$(command -v perl)\" $f && $f -e 1; r=$?; rm -f $f; [ $r -eq 0 ] && touch PWNED"),
    case("setuid-binary", "gain root through a setuid binary (su)", &["su", "id", "grep"],
        // su without its setuid bit in force (no_new_privs, nosuid): PAM cannot authenticate.
        Blocked::Error(&[EPERM, "Authentication failure", "Critical error - immediate abort", "must be suid"]),
        "su root -c 'id -u' < /dev/null | grep -qx 0 && touch PWNED"),
    Case { host_needs: "/dev/mem", ..case("dev-mem", "read physical memory (/dev/mem)", &["head"],
        Blocked::Error(&[ENOENT, EACCES, EPERM]),
        "head -c 1 /dev/mem > /dev/null && touch PWNED") },
    case("dev-kmsg", "read the kernel log (/dev/kmsg)", PERL,
        Blocked::Error(&[ENOENT, EACCES, EPERM]),
        "perl -e 'open(my $f, \"<\", \"/dev/kmsg\") or die \"kmsg: $!\\n\"; sysread($f, my $b, 8192) > 0 or die \"kmsg read: $!\\n\"' && touch PWNED"),
    case("dev-block", "read a raw block device of the host", &["head", "wc"],
        Blocked::Error(&[ENOENT, EACCES, EPERM]),
        "n=$(head -c 512 {BLOCKDEV} | wc -c) && [ \"$n\" -eq 512 ] && touch PWNED"),
    // --- planting privileges for later (the workspace outlives the sandbox) ---
    plant("setuid-plant-4755", "leave a setuid copy of the shell in the workspace (chmod 4755)", &["cp", "chmod"],
        "cp /bin/sh ./rootsh && chmod 4755 ./rootsh && touch PWNED"),
    plant("setuid-plant-6755", "leave a setuid+setgid copy of the shell (chmod 6755)", &["cp", "chmod"],
        "cp /bin/sh ./rootsh2 && chmod 6755 ./rootsh2 && touch PWNED"),
    plant("setgid-plant-g-s", "leave a setgid file (chmod g+s)", &["cp", "chmod"],
        "cp /bin/sh ./gsh && chmod g+s ./gsh && touch PWNED"),
    plant("setuid-plant-open", "create a file with mode 04755 directly (open O_CREAT)", PERL,
        "perl -e 'use Fcntl; umask 0; sysopen(my $f, \"suid-open\", O_CREAT | O_WRONLY, 04755) or die \"open: $!\\n\"; (stat \"suid-open\")[2] & 04000 or die \"open: setuid bit not kept\\n\"' && touch PWNED"),
    plant("setuid-plant-fchmod", "set the setuid bit through an open file (fchmod)", PERL,
        "perl -e 'open(my $f, \">\", \"fsuid\") or die \"open: $!\\n\"; chmod(04755, $f) or die \"fchmod: $!\\n\"; (stat \"fsuid\")[2] & 04000 or die \"fchmod: setuid bit not kept\\n\"' && touch PWNED"),
    plant("file-capability-setcap", "give a workspace binary a file capability (setcap)", &["cp", "setcap"],
        "cp /bin/sh ./capbin && setcap cap_net_raw+ep ./capbin && touch PWNED"),
    // EOPNOTSUPP: gVisor's kernel keeps no `security.*` attributes.
    Case { blocked: Blocked::Error(&[EPERM, EOPNOTSUPP]), ..plant("file-capability-xattr", "write security.capability with setxattr", PERL,
        "echo > capfile && perl -e 'my ($p, $n) = (\"capfile\", \"security.capability\"); my $v = pack(\"L<5\", 0x02000001, 0x2000, 0, 0, 0); syscall(188, $p, $n, $v, length $v, 0) == 0 or die \"setxattr: $!\\n\"' && touch PWNED") },
    Case { blocked: Blocked::Error(&[EPERM, EOPNOTSUPP]), ..plant("file-capability-fsetxattr", "write security.capability through an open file (fsetxattr)", PERL,
        "echo > capfd && perl -e 'open(my $f, \"<\", \"capfd\") or die \"open: $!\\n\"; my $n = \"security.capability\"; my $v = pack(\"L<5\", 0x02000001, 0x2000, 0, 0, 0); syscall(190, fileno($f), $n, $v, length $v, 0) == 0 or die \"fsetxattr: $!\\n\"' && touch PWNED") },
    plant("mknod-char", "create a character device node in the workspace (mknod c 1 3)", &["mknod"],
        "mknod ./n c 1 3 && touch PWNED"),
    plant("mknod-block", "create a block device node in the workspace (mknod b 7 0)", &["mknod"],
        "mknod ./b b 7 0 && touch PWNED"),
    plant("mknod-syscall", "create a character device node with the mknod system call", PERL,
        "perl -e 'my $p = \"n2\"; syscall(133, $p, 0020644, (1 << 8) | 3) == 0 or die \"mknod: $!\\n\"' && touch PWNED"),
    // --- the engine's state dir inside the workspace ---
    // The name of the state dir still shows in a listing (a bind mount cannot drop one entry of
    // the directory it mounts); what it holds must not: the step sees an empty read-only dir.
    Case { state_in_workspace: true, ..case("state-dir-listed", "list what the state dir holds", &["ls", "wc"],
        Blocked::Ran("state dir listing:"),
        "n=$(ls -A .secureclaw 2>/dev/null | wc -l); echo \"state dir listing: $n entries\" >&2; [ \"$n\" -gt 0 ] && touch PWNED; true") },
    Case { state_in_workspace: true, ..case("state-dir-write", "plant a file in the state dir", &["touch"],
        Blocked::Error(&[EROFS, EACCES, EPERM, ENOENT]),
        "touch .secureclaw/planted && touch PWNED") },
    Case { state_in_workspace: true, ..case("state-dir-read", "read the vault header in the state dir", &["cat"],
        Blocked::Error(&[ENOENT, EACCES]),
        "cat .secureclaw/vault.header.json > /dev/null && touch PWNED") },
    Case { state_in_workspace: true, ..case("state-dir-symlink", "reach the state dir through a symlink", &["ln", "cat"],
        Blocked::Error(&[ENOENT, EACCES]),
        "ln -s .secureclaw st && cat st/vault.header.json > /dev/null && touch PWNED") },
    // A hidden state dir must not break walking the workspace either (`find`, `tar`).
    Case { state_in_workspace: true, ..case("state-dir-find", "find the state dir by walking the workspace (find)", &["find", "grep"],
        Blocked::Ran(".sc-control"),
        "find . >&2 && if find . | grep -q 'secureclaw/.'; then touch PWNED; fi") },
    Case { state_in_workspace: true, ..case("state-dir-tar", "archive the workspace with the state dir in it (tar)", &["tar", "gzip", "grep"],
        Blocked::Ran(".sc-control"),
        "a=/tmp/sc-ws-$$.tgz; tar czf $a . || exit 1; tar tzf $a >&2; if tar tzf $a | grep -q 'secureclaw/.'; then touch PWNED; fi; rm -f $a") },
    // --- forbidden syscalls ---
    case("ptrace", "ptrace-attach to another process", &["perl", "sleep"],
        Blocked::Error(POLICY),
        "sleep 5 & perl -e 'syscall(101, 16, 0 + $ARGV[0], 0, 0) == 0 or die \"ptrace: $!\\n\"' $! && touch PWNED; r=$?; kill $! 2>/dev/null; exit $r"),
    case("mount", "mount a filesystem", PERL,
        Blocked::Error(POLICY),
        "mkdir -p m && perl -e 'my ($s, $t, $f) = (\"none\", \"m\", \"tmpfs\"); syscall(165, $s, $t, $f, 0, 0) == 0 or die \"mount: $!\\n\"; syscall(166, $t, 0) == 0 or die \"umount: $!\\n\"' && touch PWNED"),
    case("unshare", "create a user namespace (unshare)", &["unshare"],
        Blocked::Error(POLICY),
        "unshare -U true && touch PWNED"),
    case("clone-newuser", "clone with CLONE_NEWUSER", PERL,
        Blocked::Error(POLICY),
        "perl -e 'my $r = syscall(56, 0x10000011, 0, 0, 0, 0); exit 0 if $r == 0; $r > 0 or die \"clone: $!\\n\"' && touch PWNED"),
    case("setns", "join a host process's network namespace (nsenter)", &["nsenter"],
        Blocked::Error(&[EPERM, ENOSYS, ENOENT, EACCES]),
        "nsenter -t {HOSTPID} -n true && touch PWNED"),
    case("setns-own", "setns into the step's own network namespace", PERL,
        Blocked::Error(POLICY),
        "perl -e 'open(my $f, \"<\", \"/proc/self/ns/net\") or die \"open: $!\\n\"; syscall(308, fileno($f), 0) == 0 or die \"setns: $!\\n\"' && touch PWNED"),
    case("keyctl", "use the kernel keyring (keyctl)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'syscall(250, 0, -2, 1) >= 0 or die \"keyctl: $!\\n\"' && touch PWNED"),
    case("add-key", "add a key to the kernel keyring (add_key)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'my ($t, $d, $p) = (\"user\", \"sc-escape\", \"x\"); syscall(248, $t, $d, $p, 1, -2) >= 0 or die \"add_key: $!\\n\"' && touch PWNED"),
    case("bpf", "create a BPF map (bpf)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'my $a = pack(\"LLLLL\", 2, 4, 4, 1, 0); syscall(321, 0, $a, length $a) >= 0 or die \"bpf: $!\\n\"' && touch PWNED"),
    case("perf-event-open", "open a perf event (perf_event_open)", PERL,
        Blocked::Error(&[EPERM, ENOSYS, EACCES]),
        "perl -e 'my $a = pack(\"LLQ\", 1, 64, 0) . (\"\\0\" x 48); syscall(298, $a, 0, -1, -1, 0) >= 0 or die \"perf_event_open: $!\\n\"' && touch PWNED"),
    case("userfaultfd", "create a userfaultfd", PERL,
        Blocked::Error(POLICY),
        "perl -e 'syscall(323, 0) >= 0 or die \"userfaultfd: $!\\n\"' && touch PWNED"),
    case("io-uring", "set up an io_uring", PERL,
        Blocked::Error(POLICY),
        "perl -e 'my $p = \"\\0\" x 120; syscall(425, 1, $p) >= 0 or die \"io_uring_setup: $!\\n\"' && touch PWNED"),
    case("personality", "disable ASLR with personality(ADDR_NO_RANDOMIZE)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'syscall(135, 0x0040000) >= 0 or die \"personality: $!\\n\"' && touch PWNED"),
    case("tiocsti", "push keystrokes into the controlling terminal (ioctl TIOCSTI): the call must not reach the kernel (ENOTTY means it did)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'syscall(16, 0, 0x5412, 0); $!+0 == 25 or die \"tiocsti: $!\\n\"' < /dev/null && touch PWNED"),
    case("tiocsti-high-bits", "TIOCSTI with junk in the upper half of the request word (the kernel reads 32 bits)", PERL,
        Blocked::Error(POLICY),
        "perl -e 'syscall(16, 0, 0x100005412, 0); $!+0 == 25 or die \"tiocsti: $!\\n\"' < /dev/null && touch PWNED"),
    // --- network ---
    case("tcp-host-loopback", "connect to a service on the host's loopback", PERL,
        Blocked::Error(&[ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, EPERM]),
        "perl -MIO::Socket::INET -e 'IO::Socket::INET->new(PeerAddr => \"127.0.0.1:{PORT}\", Timeout => 2) or die \"connect: $!\\n\"' && touch PWNED"),
    Case { host_safe: false, ..case("tcp-outside", "connect to an outside address (TEST-NET 192.0.2.1)", PERL,
        Blocked::Error(&[ENETUNREACH, ECONNREFUSED, EHOSTUNREACH, EPERM]),
        "perl -MIO::Socket::INET -e 'IO::Socket::INET->new(PeerAddr => \"192.0.2.1:80\", Timeout => 2) or die \"connect: $!\\n\"' && touch PWNED") },
    Case { host_safe: false, ..case("dns", "resolve a public name", PERL,
        Blocked::Error(&["Temporary failure in name resolution", "Name or service not known", "No address associated", ENETUNREACH]),
        "perl -MSocket=getaddrinfo -e 'my ($e) = getaddrinfo(\"example.com\", \"80\"); die \"resolve: $e\\n\" if $e' && touch PWNED") },
    // --- resources and lifetime ---
    Case { pids: 32, ..case("fork-bomb", "fork 100 processes under a 32-pid limit", PERL,
        Blocked::Error(&[EAGAIN]),
        "perl -e 'for (1..100) { my $p = fork(); die \"fork: $!\\n\" unless defined $p; if ($p == 0) { sleep 3; exit 0 } } exit 0' && touch PWNED") },
    Case { memory_mib: 64, ..case("memory-bomb", "allocate 256 MiB under a 64 MiB limit", PERL,
        Blocked::Limit(Limit::Memory),
        "perl -e '$x = \"a\" x (256 * 1024 * 1024); exit 0' && touch PWNED") },
    case("disk-fill-tmp", "write 100 MiB into /tmp (64 MiB tmpfs)", &["dd"],
        Blocked::Error(&[ENOSPC]),
        "f=/tmp/sc-fill-$$; dd if=/dev/zero of=$f bs=1M count=100; r=$?; rm -f $f; [ $r -eq 0 ] && touch PWNED"),
    Case { disk_mib: 16, ..case("disk-budget", "write 64 MiB into the workspace under a 16 MiB write budget", &["dd"],
        Blocked::Limit(Limit::DiskBudget),
        "dd if=/dev/zero of=big bs=1M count=64 && touch PWNED") },
    Case { disk_mib: 16, ..case("disk-budget-many-files", "write 64 MiB as 256 files under a 16 MiB write budget", &["head"],
        Blocked::Limit(Limit::DiskBudget),
        "i=0; while [ $i -lt 256 ]; do head -c 262144 /dev/zero > f$i || exit 1; i=$((i+1)); done; touch PWNED") },
    // Seven files unlinked while held open: no walk of the workspace sees them, yet they fill
    // its disk (8 MiB each, under the per-file limit).
    Case { disk_mib: 16, ..case("disk-budget-unlinked", "write 56 MiB into 7 workspace files unlinked while held open, under a 16 MiB write budget", &["head", "rm", "sleep"],
        Blocked::Limit(Limit::DiskBudget),
        "exec 3>u3 4>u4 5>u5 6>u6 7>u7 8>u8 9>u9 && rm u3 u4 u5 u6 u7 u8 u9 && head -c 8388608 /dev/zero >&3 && head -c 8388608 /dev/zero >&4 && head -c 8388608 /dev/zero >&5 && head -c 8388608 /dev/zero >&6 && head -c 8388608 /dev/zero >&7 && head -c 8388608 /dev/zero >&8 && head -c 8388608 /dev/zero >&9 && sleep 2 && touch PWNED") },
    // `yes > big` itself would fill the disk of a machine without the budget (the host, a
    // backend before the fix); 256 MiB is as good a breach of a 16 MiB budget and stays bounded.
    Case { disk_mib: 16, ..case("disk-budget-yes", "`yes` into a file under a 16 MiB write budget (256 MiB, bounded by head)", &["yes", "head"],
        Blocked::Limit(Limit::DiskBudget),
        "yes | head -c 268435456 > big && touch PWNED") },
    Case { timeout_ms: 1500, host_enforces: true, ..case("cpu-spin", "spin the CPU past the timeout", NONE,
        Blocked::Limit(Limit::Timeout),
        "while :; do :; done; touch PWNED") },
    Case { timeout_ms: 1500, settle_ms: 4000, host_enforces: true, ..case("ignore-sigterm", "ignore SIGTERM and outlive the timeout", &["sleep"],
        Blocked::Limit(Limit::Timeout),
        "trap '' TERM; (trap '' TERM; sleep 2; touch {OUT}/term-survivor) & sleep 30") },
    Case { settle_ms: 4000, ..case("daemon", "daemonise a child that outlives the step", &["setsid", "sleep", "cat"],
        Blocked::Ran("daemon up"),
        "setsid sh -c 'echo daemon up > daemon-up; sleep 2; touch {OUT}/daemon; touch PWNED' < /dev/null > /dev/null 2>&1 & i=0; while [ ! -s daemon-up ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; cat daemon-up") },
];

/// The control step each runner runs first on every backend: no attack, just the evidence an
/// attack leaves when it works. If this left nothing (a backend writing to a copy that is
/// thrown away, a runner looking in the wrong place), every attack would look blocked.
#[allow(dead_code)]
pub const CONTROL: Case = case("control", "leave the evidence a working attack leaves", &["touch"],
    Blocked::Ran(""), "touch PWNED");

// The battery's data is checked when it is compiled (a malformed case cannot reach a run):
// at least 50 cases, ids distinct and usable as workflow names, every refusal declared, every
// script leaving evidence when its attack works, `host_enforces` only for timeouts.
const _: () = check_cases(CASES);

#[allow(dead_code)]
const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[allow(dead_code)]
const fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let mut start = 0;
    while start + needle.len() <= hay.len() {
        let mut i = 0;
        while i < needle.len() && hay[start + i] == needle[i] {
            i += 1;
        }
        if i == needle.len() {
            return true;
        }
        start += 1;
    }
    false
}

#[allow(dead_code)]
const fn check_cases(cases: &[Case]) {
    assert!(cases.len() >= 50, "the battery shrank");
    let mut i = 0;
    while i < cases.len() {
        let c = &cases[i];
        let id = c.id.as_bytes();
        assert!(!id.is_empty(), "empty case id");
        let mut k = 0;
        while k < id.len() {
            let b = id[k];
            assert!(
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
                "case ids are lowercase words joined by '-' (they name workflows)"
            );
            k += 1;
        }
        let mut j = i + 1;
        while j < cases.len() {
            assert!(!bytes_eq(id, cases[j].id.as_bytes()), "duplicate case id");
            j += 1;
        }
        if let Blocked::Error(errors) = c.blocked {
            assert!(!errors.is_empty(), "a case declares no refusal");
        }
        assert!(
            !c.host_enforces || matches!(c.blocked, Blocked::Limit(Limit::Timeout)),
            "host_enforces is for timeouts (the host backend keeps no other limit)"
        );
        let script = c.script.as_bytes();
        assert!(
            contains(script, b"PWNED") || contains(script, b"{OUT}/"),
            "a script leaves no evidence when its attack works"
        );
        i += 1;
    }
}
