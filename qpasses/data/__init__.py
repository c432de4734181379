"""Where texts come from: `texts.debian_text` fetches the pinned evaluation and calibration texts,
`windows` tokenizes a text once (cached) and cuts it into evaluation and calibration windows."""
