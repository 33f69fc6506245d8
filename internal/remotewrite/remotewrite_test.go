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
	} {
		if _, err := CountSamples(body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: error %v, want ErrMalformed", name, err)
		}
	}
}
