//! PNG charts drawn with `plotters`, labelled in DejaVu Sans, which the binary embeds
//! (`assets/DejaVuSans.ttf`, its licence beside it): the same pixels on every machine, with or
//! without system fonts. The embedded file is a subset of DejaVu Sans 2.37 (Latin, Latin-1,
//! Greek, punctuation, arrows, mathematical operators, geometric shapes: every character a plot
//! writes), made with fontTools' `pyftsubset`, to keep the repository small.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

/// The font family charts use.
pub const FONT: &str = "sans-serif";

/// A drawing error, as text (plotters' errors borrow the backend).
#[derive(Debug, thiserror::Error)]
#[error("drawing a chart: {0}")]
pub struct PlotError(pub String);

/// Any displayable drawing error as a [`PlotError`].
pub fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            panic!("the embedded DejaVu Sans is a valid font");
        }
    });
}

/// A colour of a 20-colour qualitative palette (Tableau 20: ten hues, each dark then light), so
/// that adjacent indices — a sweep's risk-difference cell and its random twin — share a hue.
pub fn palette(i: usize) -> RGBColor {
    const P: [(u8, u8, u8); 20] = [
        (31, 119, 180),
        (174, 199, 232),
        (214, 39, 40),
        (255, 152, 150),
        (44, 160, 44),
        (152, 223, 138),
        (255, 127, 14),
        (255, 187, 120),
        (148, 103, 189),
        (197, 176, 213),
        (140, 86, 75),
        (196, 156, 148),
        (227, 119, 194),
        (247, 182, 210),
        (127, 127, 127),
        (199, 199, 199),
        (188, 189, 34),
        (219, 219, 141),
        (23, 190, 207),
        (158, 218, 229),
    ];
    let (r, g, b) = P[i % P.len()];
    RGBColor(r, g, b)
}

/// Draw on a white `width × height` canvas and encode it as PNG.
pub fn png(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<(), PlotError>,
) -> Result<Vec<u8>, PlotError> {
    register_font();
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(&rgb).map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_text_into_a_png() {
        let bytes = png(120, 40, |root| {
            root.draw(&Text::new("steermoe", (5, 10), (FONT, 20).into_font()))
                .map_err(err)
        })
        .unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (120, 40));
        let dark = buf.chunks(3).filter(|p| p[0] < 128).count();
        assert!(dark > 50, "the text left {dark} dark pixels");
    }
}
