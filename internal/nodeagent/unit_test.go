package nodeagent

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "a", "POD_IP": "127.0.1.1", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for in, want := range map[string]string{
		"$(A)":                  "a",
		"--listen=$(POD_IP):80": "--listen=127.0.1.1:80",
		"$(UNKNOWN)":            "$(UNKNOWN)",
		"$$(A)":                 "$(A)",
		"$$":                    "$",
		"$(A":                   "$(A",
		"x$(EMPTY)y":            "xy",
		"$A":                    "$A",
		"a$":                    "a$",
		"$(A)$(A)":              "aa",
	} {
		if got := Expand(in, lookup); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

type fakeObjects struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (f fakeObjects) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	if cm, ok := f.cms[ns+"/"+name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f fakeObjects) Secret(ns, name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func TestContainerEnv(t *testing.T) {
	objs := fakeObjects{
		cms:     map[string]*corev1.ConfigMap{"ns/cm": {Data: map[string]string{"K": "cmv", "OTHER": "o"}}},
		secrets: map[string]*corev1.Secret{"ns/s": {Data: map[string][]byte{"pw": []byte("secret")}}},
	}
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1", Labels: map[string]string{"app": "x"}},
		Spec:       corev1.PodSpec{NodeName: "local", ServiceAccountName: "sa"},
		Status:     corev1.PodStatus{PodIP: "127.0.1.7", HostIP: "127.0.0.1"},
	}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	c := &corev1.Container{
		Name:    "c",
		EnvFrom: []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}},
		Env: []corev1.EnvVar{
			{Name: "POD_IP", ValueFrom: field("status.podIP")},
			{Name: "NAME", ValueFrom: field("metadata.name")},
			{Name: "NS", ValueFrom: field("metadata.namespace")},
			{Name: "UID", ValueFrom: field("metadata.uid")},
			{Name: "HOST_IP", ValueFrom: field("status.hostIP")},
			{Name: "NODE", ValueFrom: field("spec.nodeName")},
			{Name: "SA", ValueFrom: field("spec.serviceAccountName")},
			{Name: "APP", ValueFrom: field("metadata.labels['app']")},
			{Name: "ADDR", Value: "$(POD_IP):8080"},
			{Name: "LATER", Value: "$(DEFINED_AFTER)"},
			{Name: "DEFINED_AFTER", Value: "x"},
			{Name: "PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "pw"}}},
			{Name: "CMK", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "K"}}},
			{Name: "OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "K", Optional: &yes}}},
			{Name: "KUBERNETES_SERVICE_HOST", Value: "override"},
		},
	}
	list, env, err := ContainerEnv(pod, c, objs, map[string]string{"KUBERNETES_SERVICE_HOST": "127.0.0.1", "BASE": "b"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"POD_IP": "127.0.1.7", "NAME": "p", "NS": "ns", "UID": "u1", "HOST_IP": "127.0.0.1", "NODE": "local", "SA": "sa",
		"APP": "x", "ADDR": "127.0.1.7:8080", "LATER": "$(DEFINED_AFTER)", "PW": "secret", "CMK": "cmv", "CM_K": "cmv",
		"CM_OTHER": "o", "KUBERNETES_SERVICE_HOST": "override", "BASE": "b",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["OPT"]; ok {
		t.Error("missing optional configMap key set OPT")
	}
	if !slices.Contains(list, "ADDR=127.0.1.7:8080") || len(list) != len(env) {
		t.Errorf("list = %v", list)
	}

	c.Env = append(c.Env, corev1.EnvVar{Name: "BAD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}})
	if _, _, err := ContainerEnv(pod, c, objs, nil); err == nil || !strings.Contains(err.Error(), `secret "nope"`) {
		t.Errorf("missing secret: err = %v", err)
	}
}

func TestArgv(t *testing.T) {
	env := map[string]string{"POD_IP": "127.0.1.2"}
	if got := Argv(nil, []string{"-target=all", "-server.http-listen-address=$(POD_IP)"}, "/cortex", env); !slices.Equal(got,
		[]string{"/cortex", "-target=all", "-server.http-listen-address=127.0.1.2"}) {
		t.Errorf("args only: %v", got)
	}
	if got := Argv([]string{"/bin/cortex", "-x"}, []string{"$(POD_IP)"}, "/cortex", env); !slices.Equal(got, []string{"/cortex", "-x", "127.0.1.2"}) {
		t.Errorf("command naming the binary: %v", got)
	}
	if got := Argv([]string{"/bin/sh", "-c", "true"}, nil, "/cortex", env); !slices.Equal(got, []string{"/bin/sh", "-c", "true"}) {
		t.Errorf("other command: %v", got)
	}
}

func TestBwrapArgs(t *testing.T) {
	args := BwrapArgs(Sandbox{
		Entrypoint: "/opt/bin/cortex-v1", EntrypointTarget: "/cortex",
		Argv:     []string{"/cortex", "-config.file=/etc/cortex/config/cortex.yaml"},
		Hostname: "metrics-all-0",
		EtcHosts: "/state/pods/u/etc-hosts",
		Mounts: []Mount{
			{Source: "/state/pods/u/volumes/tls", Target: "/etc/cortex/config/tls", ReadOnly: true},
			{Source: "/state/pods/u/volumes/config", Target: "/etc/cortex/config", ReadOnly: true},
			{Source: "/state/volumes/ns-data", Target: "/data/"},
		},
		RootLinks: map[string]string{"lib": "usr/lib", "bin": "usr/bin", "lib64": ""},
		InfoFD:    3,
	})
	line := strings.Join(args, " ")
	for _, want := range []string{
		"--die-with-parent", "--hostname metrics-all-0", "--info-fd 3", "--ro-bind /usr /usr",
		"--symlink usr/bin /bin", "--symlink usr/lib /lib", "--ro-bind /lib64 /lib64", "--dir /etc",
		"--ro-bind-try /etc/ssl /etc/ssl", "--ro-bind-try /etc/resolv.conf /etc/resolv.conf",
		"--ro-bind /state/pods/u/etc-hosts /etc/hosts", "--proc /proc --dev /dev --tmpfs /tmp",
		"--bind /state/volumes/ns-data /data ", "--ro-bind /opt/bin/cortex-v1 /cortex",
		"--chdir / -- /cortex -config.file=/etc/cortex/config/cortex.yaml",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %q in\n%s", want, line)
		}
	}
	if strings.Contains(line, "--unshare-net") || strings.Contains(line, "--unshare-all") {
		t.Error("the network must be shared")
	}
	parent := strings.Index(line, "/volumes/config /etc/cortex/config")
	child := strings.Index(line, "/volumes/tls /etc/cortex/config/tls")
	if parent < 0 || child < 0 || parent > child {
		t.Errorf("the parent mount must come before the nested one:\n%s", line)
	}
	if args[len(args)-3] != "--" {
		t.Errorf("argv must follow --: %v", args)
	}
}

func TestImages(t *testing.T) {
	m := Images{}
	for _, v := range []string{"cortexproject/cortex:v1.21.1=/tools/cortex-v1.21.1", "opstrace/opstrace-gateway=/bin/gw", "localhost:5000/x=/bin/x"} {
		if err := m.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	for image, want := range map[string]string{
		"cortexproject/cortex:v1.21.1":            "/tools/cortex-v1.21.1",
		"docker.io/cortexproject/cortex:v1.21.1":  "/tools/cortex-v1.21.1",
		"cortexproject/cortex:v1.21.1@sha256:abc": "/tools/cortex-v1.21.1",
		"cortexproject/cortex:v1.20.0":            "",
		"opstrace/opstrace-gateway:dev":           "/bin/gw",
		"opstrace/opstrace-gateway":               "/bin/gw",
		"localhost:5000/x:1":                      "/bin/x",
		"unknown/image:1":                         "",
	} {
		got, ok := m.Lookup(image)
		if got != want || ok != (want != "") {
			t.Errorf("Lookup(%q) = %q, %v; want %q", image, got, ok, want)
		}
	}
	for _, bad := range []string{"noequals", "x=relative/path", "=/bin/x"} {
		if err := m.Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded", bad)
		}
	}
	if got := entrypointPath("cortexproject/cortex:v1.21.1"); got != "/cortex" {
		t.Errorf("entrypointPath = %q", got)
	}
	if got := m.String(); got != "cortexproject/cortex:v1.21.1, localhost:5000/x, opstrace/opstrace-gateway" {
		t.Errorf("String() = %q", got)
	}
}

func TestIPAM(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ips.json")
	cidr, node := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParseAddr("10.244.0.1")
	p, err := NewIPAM(file, cidr, node)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.Allocate("a")
	b, _ := p.Allocate("b")
	if a != "10.244.0.2" || b != "10.244.0.3" {
		t.Fatalf("got %s %s, want the first addresses after the network and the node's", a, b)
	}
	if again, _ := p.Allocate("a"); again != a {
		t.Errorf("a got a second address %s", again)
	}
	if err := p.Release("a"); err != nil {
		t.Fatal(err)
	}
	reloaded, err := NewIPAM(file, cidr, node)
	if err != nil {
		t.Fatal(err)
	}
	if ip, ok := reloaded.Lookup("b"); !ok || ip != b {
		t.Errorf("b after reload: %s %v", ip, ok)
	}
	if _, ok := reloaded.Lookup("a"); ok {
		t.Error("a still allocated after release")
	}
	if c, _ := reloaded.Allocate("c"); c != "10.244.0.2" {
		t.Errorf("released address not reused: %s", c)
	}
	for i := range 300 {
		ip, err := reloaded.Allocate(string(rune('A' + i)))
		if err != nil {
			t.Fatal(err)
		}
		if addr := netip.MustParseAddr(ip); !cidr.Contains(addr) || addr == node || ip == "10.244.0.0" {
			t.Fatalf("bad address %s", ip)
		}
	}

	tiny, err := NewIPAM(filepath.Join(t.TempDir(), "ips.json"), netip.MustParsePrefix("127.1.0.0/30"))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := tiny.Allocate("x")
	second, _ := tiny.Allocate("y")
	if first != "127.1.0.1" || second != "127.1.0.2" {
		t.Fatalf("a /30 gave %s %s, want its two host addresses", first, second)
	}
	if _, err := tiny.Allocate("z"); err == nil || !strings.Contains(err.Error(), "no free pod IP in 127.1.0.0/30") {
		t.Fatalf("a full range: %v", err)
	}
	if _, err := NewIPAM(file, netip.MustParsePrefix("fd00::/64")); err == nil {
		t.Fatal("an IPv6 range was accepted")
	}
}

func TestProbeState(t *testing.T) {
	p := &corev1.Probe{FailureThreshold: 2, SuccessThreshold: 2}
	s := ProbeState{}
	steps := []struct {
		success, ok bool
	}{{true, false}, {true, true}, {false, true}, {true, true}, {false, true}, {false, false}, {true, false}, {true, true}}
	for i, step := range steps {
		s.Observe(p, step.success)
		if s.OK != step.ok {
			t.Fatalf("step %d: ok = %v, want %v", i, s.OK, step.ok)
		}
	}
	live := ProbeState{OK: true}
	if live.Observe(&corev1.Probe{}, false) || live.Observe(&corev1.Probe{}, false) || !live.Observe(&corev1.Probe{}, false) {
		t.Error("liveness with default threshold 3 must fail on the third failure")
	}
}

func TestVolumeFilesAndAtomicSwap(t *testing.T) {
	mode := int32(0o640)
	objs := volObjects{fakeObjects{
		cms:     map[string]*corev1.ConfigMap{"ns/cfg": {Data: map[string]string{"cortex.yaml": "a: 1", "other": "x"}}},
		secrets: map[string]*corev1.Secret{"ns/tls": {Data: map[string][]byte{"tls.crt": []byte("C"), "tls.key": []byte("K")}}},
	}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u"}}
	cmVol := corev1.Volume{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Items: []corev1.KeyToPath{{Key: "cortex.yaml", Path: "cortex.yaml"}}}}}
	files, ok, err := projectedFiles(pod, &cmVol, objs, nil, nil)
	if err != nil || !ok || len(files) != 1 || string(files["cortex.yaml"].data) != "a: 1" {
		t.Fatalf("configMap files: %v %v %v", files, ok, err)
	}
	secVol := corev1.Volume{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "tls", DefaultMode: &mode}}}
	files, _, err = projectedFiles(pod, &secVol, objs, nil, nil)
	if err != nil || files["tls.key"].mode != 0o640 || len(files) != 2 {
		t.Fatalf("secret files: %v %v", files, err)
	}
	missing := corev1.Volume{Name: "m", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "nope"}}}
	if _, _, err := projectedFiles(pod, &missing, objs, nil, nil); err == nil {
		t.Error("missing secret: no error")
	}
	saVol := withServiceAccountVolume(pod.DeepCopy()).Spec.Volumes[0]
	files, _, err = projectedFiles(pod, &saVol, objs, staticToken("tok"), []byte("CA"))
	if err != nil || string(files["token"].data) != "tok" || string(files["ca.crt"].data) != "CA" || string(files["namespace"].data) != "ns" {
		t.Fatalf("service account volume: %v %v", files, err)
	}

	dir := t.TempDir()
	if err := writeAtomicDir(dir, map[string]file{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	if err := writeAtomicDir(dir, map[string]file{"a": {data: []byte("3"), mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "a")); got != "3" {
		t.Errorf("a = %q", got)
	}
	entries, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, "..*"))
	if len(entries) != 3 || len(hidden) != 2 { // a, ..data, ..<stamp>; sub/ removed
		t.Errorf("left over: %v %v", entries, hidden)
	}
}

type volObjects struct{ fakeObjects }

func (volObjects) PersistentVolumeClaim(ns, name string) (*corev1.PersistentVolumeClaim, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "persistentvolumeclaims"}, name)
}

func (volObjects) PersistentVolume(name string) (*corev1.PersistentVolume, error) {
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "persistentvolumes"}, name)
}

type staticToken string

func (s staticToken) Token(*corev1.Pod, string, int64) (string, error) { return string(s), nil }

func TestBuildPV(t *testing.T) {
	class := StorageClassName
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-metrics-all-0", Namespace: "ns", UID: "cu"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &class, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("5Gi")}}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
	if !wantsLocalVolume(claim, "local") {
		t.Error("claim of opstrace-local not served")
	}
	other := "gp2"
	c2 := claim.DeepCopy()
	c2.Spec.StorageClassName = &other
	if wantsLocalVolume(c2, "local") {
		t.Error("claim of another class served")
	}
	pv := BuildPV(claim, "local", "/state/volumes/ns-data-metrics-all-0")
	if pv.Spec.ClaimRef.UID != "cu" || pv.Spec.HostPath.Path != "/state/volumes/ns-data-metrics-all-0" ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete ||
		pv.Spec.Capacity.Storage().String() != "5Gi" || pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != "local" {
		t.Errorf("pv = %+v", pv.Spec)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
