package manifests

// Helpers of loki_process_test.go for loki_s3_process_test.go, an external test package so that it may use
// internal/testenv (which imports this package).
var (
	LokiBinaryForTest            = lokiBinary
	StartLokiForTest             = startLoki
	LokiRequestForTest           = lokiRequest
	LokiPushBodyForTest          = lokiPushBody
	FreePortsForTest             = freePorts
	ProductionLokiOptionsForTest = productionLokiOptions
	LokiComponentTLSForTest      = lokiComponentTLS
)
