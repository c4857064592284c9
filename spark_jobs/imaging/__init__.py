"""Images as data: decoding bytes into normalised pixels or a quarantine reason, tiling large
images, and cutting a listing into byte-packed tasks that fetch and decode on the executors."""
