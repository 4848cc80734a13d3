module github.com/tetherlb/tether

go 1.25.0

require (
	github.com/google/go-cmp v0.7.0
	github.com/hashicorp/go-metrics v0.7.0
	github.com/hashicorp/golang-lru/v2 v2.0.7
	github.com/urfave/cli/v2 v2.27.7
)

require (
	github.com/cpuguy83/go-md2man/v2 v2.0.7 // indirect
	github.com/hashicorp/go-immutable-radix v1.3.1 // indirect
	github.com/hashicorp/golang-lru v0.5.0 // indirect
	github.com/russross/blackfriday/v2 v2.1.0 // indirect
	github.com/xrash/smetrics v0.0.0-20240521201337-686a1a2994c1 // indirect
)
