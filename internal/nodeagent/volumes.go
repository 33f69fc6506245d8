package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// VolumeObjects is what volume resolution reads from the API server besides ConfigMaps and Secrets.
type VolumeObjects interface {
	Objects
	PersistentVolumeClaim(namespace, name string) (*corev1.PersistentVolumeClaim, error)
	PersistentVolume(name string) (*corev1.PersistentVolume, error)
}

// TokenSource issues service account tokens bound to a pod.
type TokenSource interface {
	Token(pod *corev1.Pod, audience string, expirationSeconds int64) (string, error)
}

// file is one file of a configMap, secret, downwardAPI or projected volume.
type file struct {
	data []byte
	mode os.FileMode
}

// projectedFiles are the files of a volume made of API objects, by relative path; nil files and ok=false
// means the volume is not of that kind.
func projectedFiles(pod *corev1.Pod, v *corev1.Volume, objs VolumeObjects, tokens TokenSource, clusterCA []byte) (map[string]file, bool, error) {
	files := map[string]file{}
	switch {
	case v.ConfigMap != nil:
		err := configMapFiles(files, pod, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, modeOr(v.ConfigMap.DefaultMode, 0o644), objs, clusterCA)
		return files, true, err
	case v.Secret != nil:
		err := secretFiles(files, pod, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, modeOr(v.Secret.DefaultMode, 0o600), objs)
		return files, true, err
	case v.DownwardAPI != nil:
		err := downwardFiles(files, pod, v.DownwardAPI.Items, modeOr(v.DownwardAPI.DefaultMode, 0o644))
		return files, true, err
	case v.Projected != nil:
		mode := modeOr(v.Projected.DefaultMode, 0o644)
		for _, src := range v.Projected.Sources {
			var err error
			switch {
			case src.ConfigMap != nil:
				err = configMapFiles(files, pod, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, mode, objs, clusterCA)
			case src.Secret != nil:
				err = secretFiles(files, pod, src.Secret.Name, src.Secret.Items, src.Secret.Optional, mode, objs)
			case src.DownwardAPI != nil:
				err = downwardFiles(files, pod, src.DownwardAPI.Items, mode)
			case src.ServiceAccountToken != nil:
				t := src.ServiceAccountToken
				exp := int64(3600)
				if t.ExpirationSeconds != nil {
					exp = *t.ExpirationSeconds
				}
				var token string
				token, err = tokens.Token(pod, t.Audience, exp)
				files[t.Path] = file{data: []byte(token), mode: 0o600}
			case src.ClusterTrustBundle != nil:
				err = fmt.Errorf("clusterTrustBundle sources are not supported by the local node agent")
			}
			if err != nil {
				return nil, true, err
			}
		}
		return files, true, nil
	}
	return nil, false, nil
}

func modeOr(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return def
}

func itemMode(it corev1.KeyToPath, def os.FileMode) os.FileMode {
	if it.Mode != nil {
		return os.FileMode(*it.Mode) & 0o777
	}
	return def
}

// rootCAConfigMap is the ConfigMap kube-controller-manager publishes in every namespace; without it (a bare
// API server in tests) the node agent's --cluster-ca-file stands in.
const rootCAConfigMap = "kube-root-ca.crt"

func configMapFiles(files map[string]file, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode, objs VolumeObjects, clusterCA []byte) error {
	cm, err := objs.ConfigMap(pod.Namespace, name)
	if err != nil {
		if name == rootCAConfigMap && len(clusterCA) > 0 {
			cm = &corev1.ConfigMap{Data: map[string]string{"ca.crt": string(clusterCA)}}
		} else if isOptional(optional) {
			return nil
		} else {
			return fmt.Errorf("configMap %q: %w", name, err)
		}
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(files, "configMap", name, data, items, optional, mode)
}

func secretFiles(files map[string]file, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode, objs VolumeObjects) error {
	s, err := objs.Secret(pod.Namespace, name)
	if err != nil {
		if isOptional(optional) {
			return nil
		}
		return fmt.Errorf("secret %q: %w", name, err)
	}
	return keyFiles(files, "secret", name, s.Data, items, optional, mode)
}

func keyFiles(files map[string]file, kind, name string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, mode os.FileMode) error {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = file{data: v, mode: mode}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if isOptional(optional) {
				continue
			}
			return fmt.Errorf("%s %q has no key %q", kind, name, it.Key)
		}
		files[it.Path] = file{data: v, mode: itemMode(it, mode)}
	}
	return nil
}

func downwardFiles(files map[string]file, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, mode os.FileMode) error {
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = FieldRefValue(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			c := containerNamed(pod, it.ResourceFieldRef.ContainerName)
			if c == nil {
				return fmt.Errorf("downwardAPI %s: no container %q", it.Path, it.ResourceFieldRef.ContainerName)
			}
			v, err = resourceFieldValue(c, it.ResourceFieldRef)
		}
		if err != nil {
			return fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		m := mode
		if it.Mode != nil {
			m = os.FileMode(*it.Mode) & 0o777
		}
		files[it.Path] = file{data: []byte(v), mode: m}
	}
	return nil
}

func containerNamed(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name || name == "" {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// filesHash identifies the contents of a volume, so an unchanged volume is not rewritten.
func filesHash(files map[string]file) string {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", k, files[k].mode, len(files[k].data))
		h.Write(files[k].data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeAtomicDir publishes files in dir the way the kubelet does: the files go to a new hidden directory
// "..<timestamp>", the symlink "..data" is switched to it with a rename, and every top-level name is a
// symlink through "..data". A process reading the volume sees either the old or the new set, never a mix.
func writeAtomicDir(dir string, files map[string]file) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for p := range files {
		if clean := path.Clean(p); path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "..") {
			return fmt.Errorf("volume file path %q must be relative and must not start with '..'", p)
		}
	}
	stamp := ".." + strconv.FormatInt(time.Now().UnixNano(), 10)
	tsDir := filepath.Join(dir, stamp)
	if err := os.Mkdir(tsDir, 0o755); err != nil {
		return err
	}
	for p, f := range files {
		target := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(target, f.mode); err != nil {
			return err
		}
	}
	oldTS, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(stamp, tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
		return err
	}
	top := map[string]bool{}
	for p := range files {
		first, _, _ := strings.Cut(path.Clean(p), "/")
		top[first] = true
	}
	for name := range top {
		link := filepath.Join(dir, name)
		want := filepath.Join("..data", name)
		if got, err := os.Readlink(link); err == nil && got == want {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(want, link); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == "..data" || name == stamp:
		case strings.HasPrefix(name, ".."):
			if name == oldTS || e.IsDir() {
				_ = os.RemoveAll(filepath.Join(dir, name))
			}
		case !top[name]:
			_ = os.RemoveAll(filepath.Join(dir, name))
		}
	}
	return nil
}
