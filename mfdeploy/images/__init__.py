"""Image input: loading and preprocessing, unlabelled image sets, labelled data sets, built-in photographs."""
