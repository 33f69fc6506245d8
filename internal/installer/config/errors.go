package config

import (
	"fmt"
	"sort"
	"strings"
)

// FieldError is one problem in the config file: where (the key path, and the line when known), what is
// wrong, and what is allowed.
type FieldError struct {
	// Path is the key path, like "aws.zone_suffixes[2]"; "" is the file itself.
	Path string
	// Line in the file, 0 when unknown.
	Line int
	// Problem says what is wrong, Allowed what would be right.
	Problem string
	Allowed string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Path == "" {
		b.WriteString("config file")
	} else {
		b.WriteString(e.Path)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	b.WriteString(": ")
	b.WriteString(e.Problem)
	if e.Allowed != "" {
		b.WriteString("; allowed: ")
		b.WriteString(e.Allowed)
	}
	return b.String()
}

// ErrorList is every problem found in a config file, in file order. It is the error returned by Parse;
// errors.As(err, &list) gives the individual FieldErrors.
type ErrorList []*FieldError

func (l ErrorList) Error() string {
	if len(l) == 1 {
		return "invalid config: " + l[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid config: %d problems:", len(l))
	for _, e := range l {
		b.WriteString("\n  - ")
		b.WriteString(e.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find the individual FieldErrors.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

func (l ErrorList) paths() []string {
	out := make([]string, len(l))
	for i, e := range l {
		out[i] = e.Path
	}
	return out
}

// without drops the errors at or under any of the paths.
func (l ErrorList) without(paths []string) ErrorList {
	var out ErrorList
	for _, e := range l {
		under := false
		for _, p := range paths {
			if p == "" || e.Path == p || strings.HasPrefix(e.Path, p+".") || strings.HasPrefix(e.Path, p+"[") {
				under = true
				break
			}
		}
		if !under {
			out = append(out, e)
		}
	}
	return out
}

// sorted orders the errors by line, those without a line last, keeping the order of errors on one line.
func (l ErrorList) sorted() ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		if (l[i].Line == 0) != (l[j].Line == 0) {
			return l[j].Line == 0
		}
		return l[i].Line < l[j].Line
	})
	return l
}
