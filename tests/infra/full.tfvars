# A complete configuration for the static checks (tests/infra): every optional part on.
project            = "dvid2ng-ci"
region             = "us-central1"
name_prefix        = "dvid2ng"
source_bucket      = "dvid2ng-ci-export"
destination_bucket = "dvid2ng-ci-volumes"
image              = "us-central1-docker.pkg.dev/dvid2ng-ci/dvid2ng/dvid2ng:0123abc"
operators          = ["user:operator@example.org"]
max_instances      = { t32gi = 10 }
