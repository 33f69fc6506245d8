package supervisor

import (
	"io"
	"os"
	"strings"
)

// LastLines returns up to n last lines of the file at path (reading at most its last 64 KiB).
func LastLines(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const maxRead = 64 << 10
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	offset := max(info.Size()-maxRead, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, offset, info.Size()-offset))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if offset > 0 && len(lines) > 1 {
		lines = lines[1:] // the first line is probably cut
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, nil
}
