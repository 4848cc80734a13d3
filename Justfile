# tether's recipes. Every recipe is a plain command: the README gives each
# one without `just` too.

# Run all tests with the race detector (what CI runs).
test:
    go test -race -count=1 ./...

# Benchmarks with their reference figures, for the README's tables.
bench:
    go run ./cmd/tetherbench
    go test -run '^$' -bench . -benchtime 2000000x -count 3 ./affinity
    go test -run '^$' -bench Connection -benchtime 3000x -count 3 ./proxy

# gofmt check, go vet, staticcheck.
lint:
    test -z "$(gofmt -l .)" || (gofmt -l . && exit 1)
    go vet ./...
    staticcheck ./...

# Fuzz each target for a while (FUZZTIME=30s by default).
fuzz time="30s":
    go test -run '^$' -fuzz FuzzParseMask -fuzztime {{time}} ./affinity
    go test -run '^$' -fuzz FuzzReadSnapshot -fuzztime {{time}} ./affinity
    go test -run '^$' -fuzz FuzzParseFlow -fuzztime {{time}} ./director
    go test -run '^$' -fuzz FuzzIPVSAdm -fuzztime {{time}} ./migrate
    go test -run '^$' -fuzz FuzzKeepalived -fuzztime {{time}} ./migrate

# The container image: a static binary built here, then the image from
# scratch without pulling anything (Containerfile). urfave_cli_no_docs
# leaves out the CLI library's man-page writer, which tether never calls
# (0.3-0.6 MiB less peak RSS).
image tag="tether:dev":
    CGO_ENABLED=0 go build -tags urfave_cli_no_docs -trimpath -ldflags "-s -w -X main.version=$(git describe --tags --always)" -o dist/tether ./cmd/tether
    podman build --network=none -t {{tag}} -f Containerfile .
