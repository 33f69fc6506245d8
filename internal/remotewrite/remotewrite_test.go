package remotewrite

import (
	"errors"
	"testing"

	"github.com/golang/snappy"
)

func TestCountSamplesCountsEverySampleOfEverySeries(t *testing.T) {
	body := Encode([]Series{
		{Labels: map[string]string{"__name__": "up", "job": "a"}, Samples: []Sample{{1, 1000}, {0, 2000}, {1, 3000}}},
		{Labels: map[string]string{"__name__": "up", "job": "b"}, Samples: []Sample{{1, 1000}}},
		{Labels: map[string]string{"__name__": "empty"}},
	})
	got, err := CountSamples(body)
	if err != nil {
		t.Fatal(err)
	}
	if got != 4 {
		t.Fatalf("CountSamples = %d, want 4", got)
	}
}

func TestCountSamplesRefusesWhatIsNotARequest(t *testing.T) {
	for name, body := range map[string][]byte{
		"not snappy":            []byte("hello"),
		"snappy, not protobuf":  snappy.Encode(nil, []byte{0x0a, 0xff, 0xff, 0xff}),
		"truncated field value": snappy.Encode(nil, []byte{0x0a, 0x05, 0x01}),
		// A snappy header claiming 1 GiB: refused before anything that size is allocated.
		"decompresses too large": {0x80, 0x80, 0x80, 0x80, 0x04, 0x00},
	} {
		if _, err := CountSamples(body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: error %v, want ErrMalformed", name, err)
		}
	}
}

func TestCountSamplesReusesBuffersSafely(t *testing.T) {
	small := Encode([]Series{{Labels: map[string]string{"__name__": "a"}, Samples: []Sample{{1, 1}}}})
	var large []Series
	for range 100 {
		large = append(large, Series{Labels: map[string]string{"__name__": "b"}, Samples: []Sample{{1, 1}, {2, 2}}})
	}
	body := Encode(large)
	for range 3 {
		for _, tt := range []struct {
			body []byte
			want int
		}{{body, 200}, {small, 1}} {
			if got, err := CountSamples(tt.body); err != nil || got != tt.want {
				t.Fatalf("CountSamples = %d, %v; want %d", got, err, tt.want)
			}
		}
	}
}
