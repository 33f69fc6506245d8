package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	// go.yaml.in/yaml/v3 through sigs.k8s.io/yaml's alias package: go.mod lists sigs.k8s.io/yaml as a direct
	// dependency and go.yaml.in/yaml/v3 as indirect, and this change does not touch go.mod. Switch the
	// import to go.yaml.in/yaml/v3 when go.mod is next tidied; nothing else changes.
	yaml "go.yaml.in/yaml/v3"
)

// keys records the key paths present in the file, with their line numbers.
type keys map[string]int

func (k keys) has(path string) bool { _, ok := k[path]; return ok }

// line of the key path, or of its nearest present parent, 0 when unknown.
func (k keys) line(path string) int {
	for path != "" {
		if l, ok := k[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// decode reads the YAML document into c, strictly: every key must be known, every value of the declared type
// (strings must be YAML strings, integers YAML integers). It walks the YAML node tree itself, instead of
// using yaml's KnownFields, so that each problem carries its full key path and all problems are collected.
func decode(data []byte, c *Config) (keys, ErrorList) {
	set := keys{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return set, ErrorList{{Problem: "is empty", Allowed: "a YAML mapping of config keys, e.g. `tenants: [prod]`"}}
		}
		return set, ErrorList{{Problem: fmt.Sprintf("is not valid YAML: %v", err)}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return set, ErrorList{{Line: extra.Line, Problem: "has more than one YAML document", Allowed: "a single document (remove the `---`)"}}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return set, ErrorList{{Problem: "is empty", Allowed: "a YAML mapping of config keys, e.g. `tenants: [prod]`"}}
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		return set, ErrorList{{Problem: "is empty", Allowed: "a YAML mapping of config keys, e.g. `tenants: [prod]`"}}
	}
	d := decoder{set: set}
	d.value(root, "", reflect.ValueOf(c).Elem())
	return set, d.errs
}

type decoder struct {
	set  keys
	errs ErrorList
}

func (d *decoder) fail(n *yaml.Node, path, problem, allowed string) {
	d.errs = append(d.errs, &FieldError{Path: path, Line: n.Line, Problem: problem, Allowed: allowed})
}

func (d *decoder) value(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch v.Kind() {
	case reflect.Pointer:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
			return // `aws:` with nothing under it: the section is present and empty
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, path, v.Elem())
	case reflect.Struct:
		d.mapping(n, path, v)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "must be a list, got "+describe(n), "a YAML list, e.g. `[a, b]` or one `- item` per line")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.value(item, fmt.Sprintf("%s[%d]", path, i), s.Index(i))
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			allowed := "a string"
			if n.Kind == yaml.ScalarNode {
				allowed = fmt.Sprintf("a string (quote it: %q)", n.Value)
			}
			d.fail(n, path, "must be a string, got "+describe(n), allowed)
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.fail(n, path, "must be an integer, got "+describe(n), "a whole number, e.g. 3")
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 32)
		if err != nil {
			d.fail(n, path, fmt.Sprintf("integer %s is out of range", n.Value), "a whole number, e.g. 3")
			return
		}
		v.SetInt(i)
	default:
		panic(fmt.Sprintf("config: no decoder for %s at %s", v.Type(), path))
	}
}

func (d *decoder) mapping(n *yaml.Node, path string, v reflect.Value) {
	fields := map[string]int{}
	var names []string
	for i := 0; i < v.NumField(); i++ {
		name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		fields[name] = i
		names = append(names, name)
	}
	sort.Strings(names)
	allowedKeys := strings.Join(names, ", ")
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be a mapping of keys, got "+describe(n), "keys "+allowedKeys)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		p := key
		if path != "" {
			p = path + "." + key
		}
		if d.set.has(p) {
			d.fail(k, p, fmt.Sprintf("key %q appears more than once", key), "each key once")
			continue
		}
		f, ok := fields[key]
		if !ok || k.Kind != yaml.ScalarNode {
			d.fail(k, p, fmt.Sprintf("unknown key %q", key), "keys "+allowedKeys)
			continue
		}
		d.set[p] = k.Line
		d.value(val, p, v.Field(f))
	}
}

// describe names a YAML value's kind for an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing (null)"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("%s %s", n.ShortTag(), n.Value)
	}
	return "an unsupported value"
}
