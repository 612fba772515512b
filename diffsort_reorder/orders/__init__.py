"""Where orders come from: scan orders over the patch grid (:mod:`.scans`) and the methods a run
can use, fixed or learned (:mod:`.methods`)."""
