//! A layers × experts heatmap of the aggregated risk difference as a PNG: one square cell per
//! (layer, expert), red for positive (more active on jailbreaks), blue for negative, white at
//! zero, scaled by the largest |risk_diff|; a one-pixel grey grid between cells.

/// Pixels per cell side.
const CELL: usize = 12;

/// Encode `values` (`[layers, experts]`, row-major) as PNG bytes.
pub fn png(values: &[f64], layers: usize, experts: usize) -> Vec<u8> {
    let (w, h) = (experts * (CELL + 1) + 1, layers * (CELL + 1) + 1);
    let scale = values.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    let mut rgb = vec![160u8; w * h * 3];
    for l in 0..layers {
        for e in 0..experts {
            let t = (values[l * experts + e] / scale).clamp(-1.0, 1.0);
            let fade = (255.0 * (1.0 - t.abs())).round() as u8;
            let color = if t >= 0.0 { [255, fade, fade] } else { [fade, fade, 255] };
            for y in 0..CELL {
                for x in 0..CELL {
                    let (px, py) = (1 + e * (CELL + 1) + x, 1 + l * (CELL + 1) + y);
                    rgb[(py * w + px) * 3..(py * w + px) * 3 + 3].copy_from_slice(&color);
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("png header into memory");
        writer.write_image_data(&rgb).expect("png data into memory");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_cell_is_red_cold_cell_is_blue() {
        let bytes = png(&[1.0, 0.0, -0.5, 0.0], 2, 2);
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let w = info.width as usize;
        let at = |x: usize, y: usize| &buf[(y * w + x) * 3..(y * w + x) * 3 + 3];
        assert_eq!(at(5, 5), [255, 0, 0]);
        assert_eq!(at(CELL + 5, 5), [255, 255, 255]);
        assert_eq!(at(5, CELL + 5), [128, 128, 255]);
    }
}
