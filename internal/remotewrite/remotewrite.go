// Package remotewrite speaks the Prometheus remote-write 1.0 wire format: a snappy-compressed protobuf
// WriteRequest. It encodes requests (for `opstrace verify` and tests) and counts the samples in a request
// without decoding it into objects (for the gateway's per-tenant rate limits).
package remotewrite

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/golang/snappy"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of prometheus/prompb's WriteRequest and TimeSeries.
const (
	writeRequestTimeseries = 1
	timeSeriesLabels       = 1
	timeSeriesSamples      = 2
	timeSeriesHistograms   = 4
	labelName              = 1
	labelValue             = 2
	sampleValue            = 1
	sampleTimestamp        = 2
)

// Headers a remote-write request carries, per the specification.
var Headers = map[string]string{
	"Content-Type":                      "application/x-protobuf",
	"Content-Encoding":                  "snappy",
	"X-Prometheus-Remote-Write-Version": "0.1.0",
}

// Sample is one value at a time in milliseconds since the epoch.
type Sample struct {
	Value         float64
	TimestampMsec int64
}

// Series is a label set and its samples. Labels must include __name__.
type Series struct {
	Labels  map[string]string
	Samples []Sample
}

// Encode builds the compressed body of a remote-write request. Labels are sorted by name, as the format requires.
func Encode(series []Series) []byte {
	var request []byte
	for _, s := range series {
		var ts []byte
		names := make([]string, 0, len(s.Labels))
		for name := range s.Labels {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			var label []byte
			label = protowire.AppendTag(label, labelName, protowire.BytesType)
			label = protowire.AppendString(label, name)
			label = protowire.AppendTag(label, labelValue, protowire.BytesType)
			label = protowire.AppendString(label, s.Labels[name])
			ts = protowire.AppendTag(ts, timeSeriesLabels, protowire.BytesType)
			ts = protowire.AppendBytes(ts, label)
		}
		for _, sample := range s.Samples {
			var sm []byte
			sm = protowire.AppendTag(sm, sampleValue, protowire.Fixed64Type)
			sm = protowire.AppendFixed64(sm, math.Float64bits(sample.Value))
			sm = protowire.AppendTag(sm, sampleTimestamp, protowire.VarintType)
			sm = protowire.AppendVarint(sm, uint64(sample.TimestampMsec))
			ts = protowire.AppendTag(ts, timeSeriesSamples, protowire.BytesType)
			ts = protowire.AppendBytes(ts, sm)
		}
		request = protowire.AppendTag(request, writeRequestTimeseries, protowire.BytesType)
		request = protowire.AppendBytes(request, ts)
	}
	return snappy.Encode(nil, request)
}

// ErrMalformed is returned for a body that is not a snappy-compressed WriteRequest.
var ErrMalformed = errors.New("not a snappy-compressed remote-write request")

// MaxDecodedBytes bounds a request's decompressed size, as Cortex's distributor does by default
// (max_recv_msg_size): a few bytes of snappy header must not make the gateway allocate gigabytes.
const MaxDecodedBytes = 100 << 20

// decodeBuffers are reused for decompressing requests to count their samples (a request's decoded form is
// only walked, never kept); buffers over maxPooledBytes are left to the garbage collector.
var decodeBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledBytes = 4 << 20

// CountSamples returns the number of samples and histogram samples in a compressed request, walking the
// protobuf without allocating per series.
func CountSamples(body []byte) (int, error) {
	size, err := snappy.DecodedLen(body)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if size > MaxDecodedBytes {
		return 0, fmt.Errorf("%w: %d bytes decompressed, more than %d", ErrMalformed, size, MaxDecodedBytes)
	}
	buffer := decodeBuffers.Get().(*[]byte)
	if size > cap(*buffer) {
		*buffer = make([]byte, size)
	}
	defer func() {
		if cap(*buffer) <= maxPooledBytes {
			decodeBuffers.Put(buffer)
		}
	}()
	request, err := snappy.Decode((*buffer)[:size], body)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	count := 0
	err = eachField(request, func(num protowire.Number, value []byte) error {
		if num != writeRequestTimeseries {
			return nil
		}
		return eachField(value, func(num protowire.Number, _ []byte) error {
			if num == timeSeriesSamples || num == timeSeriesHistograms {
				count++
			}
			return nil
		})
	})
	return count, err
}

// eachField calls fn with every length-delimited field of a protobuf message and skips the others.
func eachField(message []byte, fn func(protowire.Number, []byte) error) error {
	for len(message) > 0 {
		num, typ, n := protowire.ConsumeTag(message)
		if n < 0 {
			return ErrMalformed
		}
		message = message[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, message)
			if n < 0 {
				return ErrMalformed
			}
			message = message[n:]
			continue
		}
		value, n := protowire.ConsumeBytes(message)
		if n < 0 {
			return ErrMalformed
		}
		if err := fn(num, value); err != nil {
			return err
		}
		message = message[n:]
	}
	return nil
}
