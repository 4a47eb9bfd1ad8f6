// The sandbox escape battery, as data shared by both runners:
// - `sandbox/tests/escape_native.rs` runs every case through the `Sandbox` trait (native,
//   docker and host backends), and
// - `tests/escape.rs` runs every case as a workflow step through the real `secureclaw` binary;
// `harness.rs` is the fixture both use.
//
// Each case is a real attack in `sh`. A case reports that the attack SUCCEEDED by leaving
// evidence the runner checks from the host afterwards:
// - the file `PWNED` in the workspace (scripts end with `&& touch PWNED`),
// - any change in the canary directory outside the workspace ({OUT}: planted files changed,
//   new files appeared),
// - a connection accepted by the host loopback listener on {PORT}.
// On an isolating backend every case must leave no evidence. On `host` most succeed; the
// runner prints which, proving the battery can fail.
//
// Placeholders: {OUT} canary dir (absolute host path, sibling of the workspace, reachable as
// `../outside` from it), {STATE} the engine state dir (with a planted key), {PORT} the host
// loopback listener, {TOKEN} a secret in the environment of another running step.
//
// Attacks stay harmless on the host backend: reads only, writes are cleaned up, syscalls use
// process-private objects, and nothing is sent off the machine (cases that would are
// `host_safe: false` and only run on isolating backends).

#[allow(dead_code)]
pub struct Case {
    pub id: &'static str,
    pub what: &'static str,
    pub script: &'static str,
    /// Step timeout in milliseconds.
    pub timeout_ms: u64,
    pub memory_mib: u64,
    pub pids: u32,
    /// Wait this long after the step before looking for evidence (late daemons).
    pub settle_ms: u64,
    /// Run a second step holding {TOKEN} in its environment while this one runs.
    pub other_step: bool,
    /// False when running the attack unconfined could send traffic off the machine.
    pub host_safe: bool,
    /// How an isolating backend must end the step, when it matters
    /// ("oom", "timeout", "pids_or_fail", "fail").
    pub expect: &'static str,
}

#[allow(dead_code)]
const fn case(id: &'static str, what: &'static str, script: &'static str) -> Case {
    Case {
        id,
        what,
        script,
        timeout_ms: 10_000,
        memory_mib: 256,
        pids: 64,
        settle_ms: 0,
        other_step: false,
        host_safe: true,
        expect: "",
    }
}

#[allow(dead_code)]
pub const CASES: &[Case] = &[
    // --- writing outside the workspace ---
    case("write-absolute", "write a file outside the workspace by absolute path",
        "echo x > {OUT}/abs && touch PWNED"),
    case("write-dotdot", "escape the workspace with ..",
        "echo x > ../outside/dotdot && touch PWNED"),
    case("write-symlink", "symlink in the workspace pointing outside, write through it",
        "ln -s {OUT} lnk && echo x > lnk/symlink && touch PWNED"),
    case("write-hardlink", "hardlink a file outside into the workspace and modify it",
        "ln {OUT}/secret.txt hl && echo tampered >> hl && touch PWNED"),
    case("write-proc-self-root", "write through /proc/self/root",
        "echo x > /proc/self/root{OUT}/procroot && touch PWNED"),
    case("write-proc-pid-cwd", "write through /proc/1/cwd (pid 1's view of the filesystem)",
        "echo x > /proc/1/cwd{OUT}/proccwd && touch PWNED"),
    case("write-system-dir", "modify a system directory (/usr)",
        "touch /usr/.secureclaw-escape && rm -f /usr/.secureclaw-escape && touch PWNED"),
    case("write-sysctl", "write a global sysctl (same value back)",
        "v=$(cat /proc/sys/vm/overcommit_ratio) && echo \"$v\" > /proc/sys/vm/overcommit_ratio && touch PWNED"),
    case("git-hooks", "plant a git hook in the workspace's .git",
        "echo 'echo evil' > .git/hooks/pre-commit && touch PWNED"),
    // --- reading host secrets ---
    case("read-shadow", "read /etc/shadow",
        "cat /etc/shadow > /dev/null && touch PWNED"),
    case("read-ssh-key", "read a private key outside the workspace (~/.ssh stand-in)",
        "cat {OUT}/ssh/id_ed25519 > /dev/null && touch PWNED"),
    case("read-state-dir", "read the engine's state dir (vault key)",
        "cat {STATE}/vault.key > /dev/null && touch PWNED"),
    // Runners give every attack step SECURECLAW_CASE_SELF=1: when pid 1 is the step itself
    // (a container's entrypoint) or an init carrying the step's own environment, reading it
    // reveals nothing; any other pid 1 (host init, a sandbox supervisor) must stay unreadable.
    case("read-proc1-environ", "read pid 1's environment (when pid 1 is not the step itself)",
        "tr '\\0' '\\n' < /proc/1/environ | grep -q = && ! grep -qa SECURECLAW_CASE_SELF=1 /proc/1/environ && touch PWNED"),
    Case { other_step: true, ..case("read-other-step-env", "read another running step's environment via /proc",
        "sleep 1; grep -qa '{TOKEN}' /proc/[0-9]*/environ 2>/dev/null && touch PWNED") },
    // --- privilege and exec tricks ---
    case("exec-from-tmp", "drop a binary into /tmp and run it",
        "f=/tmp/sc-exec-$$; cp /bin/true $f && $f; r=$?; rm -f $f; [ $r -eq 0 ] && touch PWNED"),
    case("setuid-binary", "gain root through a setuid binary (su)",
        "su root -c 'id -u' < /dev/null 2>/dev/null | grep -qx 0 && touch PWNED"),
    case("dev-mem", "read physical memory (/dev/mem)",
        "head -c 1 /dev/mem > /dev/null 2>&1 && touch PWNED"),
    case("dev-kmsg", "read the kernel log (/dev/kmsg)",
        "timeout 2 head -c 1 /dev/kmsg > /dev/null 2>&1 && touch PWNED"),
    case("dev-block", "read a raw block device",
        "for d in /dev/vda /dev/sda /dev/nvme0n1 /dev/xvda; do [ -b $d ] && head -c 512 $d > /dev/null && touch PWNED; done; true"),
    // --- forbidden syscalls ---
    case("ptrace", "ptrace-attach to another process",
        "sleep 5 & perl -e 'exit(syscall(101, 16, 0 + $ARGV[0], 0, 0) == 0 ? 0 : 1)' $! && touch PWNED; kill $! 2>/dev/null; true"),
    case("mount", "mount a filesystem",
        "mkdir -p m && mount -t tmpfs none m 2>/dev/null && umount m && touch PWNED"),
    case("unshare", "create a user namespace (unshare)",
        "unshare -U true 2>/dev/null && touch PWNED"),
    case("clone-newuser", "clone with CLONE_NEWUSER",
        "perl -e 'my $r = syscall(56, 0x10000011, 0, 0, 0, 0); exit 0 if $r == 0; exit($r > 0 ? 0 : 1)' && touch PWNED"),
    case("setns", "join pid 1's namespaces (setns)",
        "nsenter -t 1 -n true 2>/dev/null && touch PWNED"),
    case("keyctl", "use the kernel keyring (keyctl)",
        "perl -e 'exit(syscall(250, 0, -2, 1) >= 0 ? 0 : 1)' && touch PWNED"),
    case("add-key", "add a key to the kernel keyring (add_key)",
        "perl -e 'exit(syscall(248, \"user\", \"sc-escape\", \"x\", 1, -2) >= 0 ? 0 : 1)' && touch PWNED"),
    case("bpf", "create a BPF map (bpf)",
        "perl -e 'my $a = pack(\"LLLLL\", 2, 4, 4, 1, 0); exit(syscall(321, 0, $a, length $a) >= 0 ? 0 : 1)' && touch PWNED"),
    case("perf-event-open", "open a perf event (perf_event_open)",
        "perl -e 'my $a = pack(\"LLQ\", 1, 64, 0) . (\"\\0\" x 48); exit(syscall(298, $a, 0, -1, -1, 0) >= 0 ? 0 : 1)' && touch PWNED"),
    case("userfaultfd", "create a userfaultfd",
        "perl -e 'exit(syscall(323, 0) >= 0 ? 0 : 1)' && touch PWNED"),
    case("io-uring", "set up an io_uring",
        "perl -e 'my $p = \"\\0\" x 120; exit(syscall(425, 1, $p) >= 0 ? 0 : 1)' && touch PWNED"),
    case("personality", "disable ASLR with personality(ADDR_NO_RANDOMIZE)",
        "perl -e 'exit(syscall(135, 0x0040000) >= 0 ? 0 : 1)' && touch PWNED"),
    case("tiocsti", "push keystrokes into the controlling terminal (ioctl TIOCSTI): the call must not reach the kernel (ENOTTY means it did)",
        "perl -e 'syscall(16, 0, 0x5412, 0); exit(($!+0) == 25 ? 0 : 1)' < /dev/null && touch PWNED"),
    case("tiocsti-high-bits", "TIOCSTI with junk in the upper half of the request word (the kernel reads 32 bits)",
        "perl -e 'syscall(16, 0, 0x100005412, 0); exit(($!+0) == 25 ? 0 : 1)' < /dev/null && touch PWNED"),
    // --- network ---
    case("tcp-host-loopback", "connect to a service on the host's loopback",
        "perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"127.0.0.1:{PORT}\", Timeout => 2) ? 0 : 1)' && touch PWNED"),
    Case { host_safe: false, ..case("tcp-outside", "connect to an outside address (TEST-NET 192.0.2.1)",
        "perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"192.0.2.1:80\", Timeout => 2) ? 0 : 1)' && touch PWNED") },
    Case { host_safe: false, ..case("dns", "resolve a public name",
        "timeout 3 getent hosts example.com > /dev/null && touch PWNED") },
    // --- resources and lifetime ---
    Case { pids: 32, expect: "fail", ..case("fork-bomb", "fork 100 processes under a 32-pid limit",
        "perl -e 'for (1..100) { my $p = fork(); exit 1 unless defined $p; if ($p == 0) { sleep 3; exit 0 } } exit 0' && touch PWNED") },
    Case { memory_mib: 64, expect: "oom", ..case("memory-bomb", "allocate 256 MiB under a 64 MiB limit",
        "perl -e '$x = \"a\" x (256 * 1024 * 1024); exit 0' && touch PWNED") },
    case("disk-fill-tmp", "write 100 MiB into /tmp (64 MiB tmpfs)",
        "f=/tmp/sc-fill-$$; dd if=/dev/zero of=$f bs=1M count=100 2>/dev/null; r=$?; rm -f $f; [ $r -eq 0 ] && touch PWNED"),
    Case { timeout_ms: 1500, expect: "timeout", ..case("cpu-spin", "spin the CPU past the timeout",
        "while :; do :; done; touch PWNED") },
    Case { timeout_ms: 1500, settle_ms: 3000, expect: "timeout", ..case("ignore-sigterm", "ignore SIGTERM and outlive the timeout",
        "trap '' TERM; (trap '' TERM; sleep 2; touch {OUT}/term-survivor) & sleep 30") },
    Case { settle_ms: 3000, ..case("daemon", "daemonise a child that outlives the step",
        "setsid sh -c 'sleep 2; touch {OUT}/daemon; touch PWNED' < /dev/null > /dev/null 2>&1 & sleep 0.5; exit 0") },
];
