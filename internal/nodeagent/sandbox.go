package nodeagent

import (
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Mount is a host directory or file bound into a sandbox.
type Mount struct {
	Source   string // host path
	Target   string // path in the sandbox
	ReadOnly bool
}

// Sandbox describes one container process run by bubblewrap: a fresh root holding the host's /usr (shared
// libraries, CA certificates, a shell for exec probes), a few files of /etc, private /proc, /dev and /tmp,
// the image's binary, and the pod's volumes at their mount paths. The network is the host's: a pod binds
// its own loopback address.
type Sandbox struct {
	// Entrypoint is the host binary standing for the image, mounted read-only at EntrypointTarget.
	Entrypoint, EntrypointTarget string
	// Argv is the command line inside the sandbox; Argv[0] is a path in the sandbox.
	Argv       []string
	WorkingDir string
	Hostname   string
	// EtcHosts is a host file mounted at /etc/hosts; empty means the host's.
	EtcHosts string
	// ResolvConf is a host file mounted at /etc/resolv.conf; empty means the host's.
	ResolvConf string
	Mounts     []Mount
	// RootLinks are the top-level host directories that are symlinks into /usr on merged-/usr systems,
	// such as "lib" → "usr/lib"; HostRootLinks finds them.
	RootLinks map[string]string
	// InfoFD is the file descriptor bwrap writes the sandboxed process's pid to, 0 for none.
	InfoFD int
}

// rootDirs are the top-level directories of the host a program may need besides /usr.
var rootDirs = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// etcFiles are bound from the host's /etc if they exist: TLS roots, name resolution and user database.
var etcFiles = []string{"ssl", "ca-certificates", "pki", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
	"passwd", "group", "localtime", "mime.types"}

// HostRootLinks reads which of the host's top-level directories are symlinks (merged /usr) and which are
// real directories (mapped to "" and bound read-only).
func HostRootLinks() map[string]string {
	links := map[string]string{}
	for _, d := range rootDirs {
		fi, err := os.Lstat("/" + d)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			if target, err := os.Readlink("/" + d); err == nil {
				links[d] = strings.TrimPrefix(target, "/")
			}
			continue
		}
		if fi.IsDir() {
			links[d] = ""
		}
	}
	return links
}

// BwrapArgs is the bubblewrap command line (without the bwrap binary) of a sandbox.
func BwrapArgs(s Sandbox) []string {
	args := []string{"--die-with-parent", "--unshare-ipc", "--unshare-uts"}
	if s.Hostname != "" {
		args = append(args, "--hostname", s.Hostname)
	}
	if s.InfoFD > 0 {
		args = append(args, "--info-fd", strconv.Itoa(s.InfoFD))
	}
	args = append(args, "--ro-bind", "/usr", "/usr")
	dirs := make([]string, 0, len(s.RootLinks))
	for d := range s.RootLinks {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if target := s.RootLinks[d]; target != "" {
			args = append(args, "--symlink", target, "/"+d)
		} else {
			args = append(args, "--ro-bind", "/"+d, "/"+d)
		}
	}
	args = append(args, "--dir", "/etc")
	for _, f := range etcFiles {
		if f == "resolv.conf" && s.ResolvConf != "" {
			args = append(args, "--ro-bind", s.ResolvConf, "/etc/resolv.conf")
			continue
		}
		args = append(args, "--ro-bind-try", "/etc/"+f, "/etc/"+f)
	}
	if s.EtcHosts != "" {
		args = append(args, "--ro-bind", s.EtcHosts, "/etc/hosts")
	} else {
		args = append(args, "--ro-bind-try", "/etc/hosts", "/etc/hosts")
	}
	args = append(args, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/var/tmp")

	// Parents before children: a volume at /etc/app and another at /etc/app/tls.
	mounts := append([]Mount(nil), s.Mounts...)
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(path.Clean(mounts[i].Target), "/") < strings.Count(path.Clean(mounts[j].Target), "/")
	})
	for _, m := range mounts {
		flag := "--bind"
		if m.ReadOnly {
			flag = "--ro-bind"
		}
		args = append(args, flag, m.Source, path.Clean(m.Target))
	}
	if s.Entrypoint != "" {
		args = append(args, "--ro-bind", s.Entrypoint, s.EntrypointTarget)
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	args = append(args, "--chdir", wd, "--")
	return append(args, s.Argv...)
}

// Argv is a container's command line by the rules of Kubernetes: command replaces the image's entrypoint,
// args replace its default arguments (our images have none), and $(VAR) is expanded with the container's
// environment. A command naming the image's binary by its base name runs the image's binary.
func Argv(command, args []string, entrypoint string, env map[string]string) []string {
	lookup := func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
	var argv []string
	if len(command) == 0 {
		argv = append(argv, entrypoint)
	} else {
		for _, c := range command {
			argv = append(argv, Expand(c, lookup))
		}
		if path.Base(argv[0]) == path.Base(entrypoint) {
			argv[0] = entrypoint
		}
	}
	for _, a := range args {
		argv = append(argv, Expand(a, lookup))
	}
	return argv
}
