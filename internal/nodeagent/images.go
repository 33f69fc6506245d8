package nodeagent

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// Images maps container image references to host binaries: the local node agent pulls nothing, it runs the
// binary that stands for an image. A key without a tag matches every tag of its repository.
type Images map[string]string

// Set parses a --image flag value "REPO[:TAG]=PATH".
func (m Images) Set(value string) error {
	ref, bin, ok := strings.Cut(value, "=")
	if !ok || ref == "" || bin == "" {
		return fmt.Errorf("image %q: want REPO[:TAG]=PATH, such as cortexproject/cortex:v1.21.1=/usr/local/bin/cortex", value)
	}
	if !path.IsAbs(bin) {
		return fmt.Errorf("image %q: the binary path %q must be absolute", value, bin)
	}
	m[normalizeImage(ref)] = bin
	return nil
}

// String lists the known images, sorted, for flag help and for the ImageNotKnown message.
func (m Images) String() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// Type is the flag type shown in --help.
func (m Images) Type() string { return "REPO[:TAG]=PATH" }

// Lookup returns the binary standing for image: an entry for the exact reference first, then one for its
// repository without tag. A digest (@sha256:…) is ignored.
func (m Images) Lookup(image string) (string, bool) {
	ref := normalizeImage(image)
	if bin, ok := m[ref]; ok {
		return bin, true
	}
	repo, _ := splitTag(ref)
	bin, ok := m[repo]
	return bin, ok
}

// normalizeImage drops a digest and the implicit registry prefixes, so "docker.io/library/x:1" and "x:1" are
// the same image.
func normalizeImage(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	ref = strings.TrimPrefix(ref, "docker.io/")
	ref = strings.TrimPrefix(ref, "index.docker.io/")
	ref = strings.TrimPrefix(ref, "library/")
	return ref
}

// splitTag splits "repo:tag" into repo and tag; a colon before the last slash is a registry port.
func splitTag(ref string) (repo, tag string) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ref, ""
	}
	return ref[:i], ref[i+1:]
}

// entrypointPath is where a container's binary is mounted inside its sandbox: "/" plus the base name of the
// image's repository, such as /cortex for cortexproject/cortex.
func entrypointPath(image string) string {
	repo, _ := splitTag(normalizeImage(image))
	return "/" + path.Base(repo)
}
