//! Every route of the router, for every role: the table the router is built
//! from says who may use each route, and this walks it. A route added to the
//! table is walked too; a route cannot be added without saying who it is for.

use std::collections::{BTreeMap, HashSet};

use reqwest::{Client, StatusCode, redirect::Policy};
use weightgate::{
    domain::accounts,
    types::Email,
    web::{Access, route_table},
};

use crate::{dashboard::sign_in_as, helpers::*, researcher::sign_in_researcher};

const OTHER_MODEL: &str = "other-model";
const ASSIGNED: &str = "assigned@lab.example.org";
const UNASSIGNED: &str = "unassigned@lab.example.org";
const DISABLED: &str = "disabled@lab.example.org";
/// Researcher X: approved for the test model.
const X: &str = "x@uni.example.edu";
/// Researcher Y: approved for the other model.
const Y: &str = "y@uni.example.edu";
/// Researcher Z: waiting for review on the test model.
const Z: &str = "z@uni.example.edu";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Anonymous,
    /// Researcher X, on records of researcher Y.
    Researcher,
    /// Researcher X, on X's own records.
    ResearcherOwn,
    /// A reviewer of the test model.
    Assigned,
    /// A reviewer of the other model only.
    Unassigned,
    /// A reviewer of the test model whose account was disabled after sign-in.
    Disabled,
    Admin,
}

/// What a request must get.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Sent to sign in at this path, and nothing done.
    SignIn(&'static str),
    /// 403 or 404, and nothing done.
    Refused,
    /// Let through: neither sent to sign in nor refused (a bad or empty form
    /// may still be answered 4xx).
    Allowed,
    /// Anything but a failure of the portal (public and secret routes, whose
    /// own tests check them).
    NoFailure,
    /// 401: the API takes a token, never a browser's session (the token
    /// scopes are walked in `api.rs`).
    Unauthorized,
}

fn expect(access: Access, role: Role, names_a_record: bool) -> Expect {
    use Role::*;
    match access {
        Access::Public | Access::Secret => Expect::NoFailure,
        Access::Token(_) => Expect::Unauthorized,
        Access::Researcher => match role {
            ResearcherOwn => Expect::Allowed,
            Researcher if names_a_record => Expect::Refused,
            Researcher => Expect::Allowed,
            Anonymous | Assigned | Unassigned | Disabled | Admin => Expect::SignIn("/signin"),
        },
        Access::Reviewer | Access::ReviewerOfModel | Access::Admin => match (access, role) {
            (_, Anonymous | Researcher | ResearcherOwn | Disabled) => Expect::SignIn("/admin/login"),
            (_, Admin) => Expect::Allowed,
            (Access::Reviewer, Assigned | Unassigned) => Expect::Allowed,
            (Access::ReviewerOfModel, Assigned) => Expect::Allowed,
            (Access::ReviewerOfModel, Unassigned) => Expect::Refused,
            (Access::Admin, Assigned | Unassigned) => Expect::Refused,
            other => unreachable!("{other:?}"),
        },
    }
}

/// A browser that keeps cookies and shows redirects instead of following them.
fn browser() -> Client {
    browser_with(std::sync::Arc::default(), Policy::none())
}

fn browser_with(jar: std::sync::Arc<reqwest::cookie::Jar>, redirects: Policy) -> Client {
    weightgate::client::install_crypto();
    Client::builder()
        .cookie_provider(jar)
        .redirect(redirects)
        .build()
        .unwrap()
}

/// The records the paths name.
struct Records {
    pending: String,
    grant_x: String,
    grant_y: String,
    application_x: String,
    application_y: String,
    reviewer: String,
    template: String,
    /// An access URL of grant X (the approval e-mail's).
    access_url_x: String,
}

impl Records {
    fn path(&self, template: &str, role: Role) -> String {
        let own = role == Role::ResearcherOwn;
        let mut path = template.to_owned();
        let id = if template.starts_with("/admin/applications/") {
            &self.pending
        } else if template.starts_with("/admin/grants/") {
            &self.grant_x
        } else if template.starts_with("/admin/reviewers/") {
            &self.reviewer
        } else if template.starts_with("/admin/templates/") {
            &self.template
        } else if template.starts_with("/me/applications/") {
            if own {
                &self.application_x
            } else {
                &self.application_y
            }
        } else if own {
            &self.grant_x
        } else {
            &self.grant_y
        };
        for (param, value) in [
            ("{id}", id.as_str()),
            ("{slug}", MODEL),
            ("{version}", "1"),
            ("{token}", "not-a-real-token"),
            ("{*file}", "shard-0.bin"),
            ("{release}", "r1"),
            ("{name}", "SHA256SUMS"),
            ("{url}", self.access_url_x.as_str()),
        ] {
            path = path.replace(param, value);
        }
        path
    }
}

/// Applies for `slug` as `email` and confirms the address.
async fn apply_to(t: &TestApp, slug: &str, email: &str) {
    let researcher = client();
    let response = t
        .post_form(
            &researcher,
            &format!("/models/{slug}"),
            &format!("/models/{slug}/apply"),
            &[
                ("name", "Route Walker"),
                ("email", email),
                ("affiliation", "Lab"),
                ("intended_use", "Research"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let confirm = link_in(
        &t.wait_for_mail(email, "Confirm your application").await,
        "/confirm/",
    );
    t.post_form(&researcher, &confirm, &confirm, &[]).await;
}

async fn id_of(t: &TestApp, sql: &str, email: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(email)
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

async fn add_reviewer(t: &TestApp, email: &str, model: &str) -> String {
    let parsed: Email = email.parse().unwrap();
    let id = accounts::add_reviewer(&t.app, &parsed, PASSWORD, false, "test")
        .await
        .unwrap();
    weightgate::domain::policy::assign(&t.app, model, &parsed, true, "test")
        .await
        .unwrap();
    id
}

/// A form's CSRF token for `who`, from a page they may open.
async fn token_of(t: &TestApp, who: &Client, page: &str) -> String {
    let html = who.get(t.url(page)).send().await.unwrap().text().await.unwrap();
    csrf(&html)
}

both!(every_route_answers_every_role_as_its_rule_says);
async fn every_route_answers_every_role_as_its_rule_says() {
    let t = TestApp::spawn().await;
    // The other model, with a file, so that its grants and applications exist.
    t.publish_other_model(OTHER_MODEL).await;
    add_reviewer(&t, ASSIGNED, MODEL).await;
    let unassigned_id = add_reviewer(&t, UNASSIGNED, OTHER_MODEL).await;
    let disabled_id = add_reviewer(&t, DISABLED, MODEL).await;

    // X approved for the test model; Y for the other; Z waiting on the test model.
    t.approved_researcher(X).await;
    apply_to(&t, OTHER_MODEL, Y).await;
    let admin_helper = client();
    t.sign_in(&admin_helper).await;
    let y_application = t.pending_application(&admin_helper, Y).await;
    let response = t
        .post_form(
            &admin_helper,
            &format!("/admin/applications/{y_application}"),
            &format!("/admin/applications/{y_application}/approve"),
            &[],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    t.apply_and_confirm(Z).await;
    weightgate::domain::policy::save_template(&t.app, "Not enough detail", "Tell us more.", "test")
        .await
        .unwrap();
    let by_email =
        "SELECT g.id FROM grants g JOIN researchers r ON r.id = g.researcher_id WHERE r.email = $1";
    let app_by_email =
        "SELECT a.id FROM applications a JOIN researchers r ON r.id = a.researcher_id WHERE r.email = $1";
    let records = Records {
        pending: id_of(&t, app_by_email, Z).await,
        grant_x: id_of(&t, by_email, X).await,
        grant_y: id_of(&t, by_email, Y).await,
        application_x: id_of(&t, app_by_email, X).await,
        application_y: id_of(&t, app_by_email, Y).await,
        reviewer: unassigned_id,
        template: sqlx::query_scalar("SELECT id FROM deny_templates")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap(),
        access_url_x: id_of(
            &t,
            "SELECT t.id FROM grant_tokens t JOIN grants g ON g.id = t.grant_id
             JOIN researchers r ON r.id = g.researcher_id WHERE r.email = $1",
            X,
        )
        .await,
    };

    // A browser per role, signed in as it says.
    let mut browsers: BTreeMap<Role, Client> = BTreeMap::new();
    browsers.insert(Role::Anonymous, browser());
    // Signed in by following the e-mailed link, in a browser that shares
    // its cookies with the one that walks the routes.
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    sign_in_researcher(
        &t,
        &browser_with(jar.clone(), Policy::limited(5)),
        X,
        &mut HashSet::new(),
    )
    .await;
    let researcher = browser_with(jar, Policy::none());
    browsers.insert(Role::Researcher, researcher.clone());
    browsers.insert(Role::ResearcherOwn, researcher);
    for (role, email) in [
        (Role::Assigned, ASSIGNED),
        (Role::Unassigned, UNASSIGNED),
        (Role::Disabled, DISABLED),
        (Role::Admin, REVIEWER),
    ] {
        let b = browser();
        let (status, _) = sign_in_as(&t, &b, email, PASSWORD).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{email} signs in");
        browsers.insert(role, b);
    }
    accounts::change_reviewer(
        &t.app,
        &disabled_id,
        accounts::ReviewerChange::Disabled(true),
        "test",
    )
    .await
    .unwrap();
    let mut tokens: BTreeMap<Role, String> = BTreeMap::new();
    for (role, b) in &browsers {
        let page = match role {
            Role::Anonymous | Role::Disabled => "/signin",
            Role::Researcher | Role::ResearcherOwn => "/me",
            _ => "/admin/account",
        };
        tokens.insert(*role, token_of(&t, b, page).await);
    }

    // A reviewer of the other model sees nothing of this model's records,
    // not even through a bulk decision.
    let unassigned = &browsers[&Role::Unassigned];
    let (_, queue) = t.get_html(unassigned, "/admin?status=all").await;
    assert!(
        !queue.contains(Z) && !queue.contains(X),
        "the queue shows only the reviewer's models"
    );
    let (_, grants) = t.get_html(unassigned, "/admin/grants").await;
    assert!(
        !grants.contains(X) && grants.contains(Y),
        "the grants list shows only the reviewer's models"
    );
    let bulk = unassigned
        .post(t.url("/admin/applications/bulk"))
        .form(&[
            ("authenticity_token", tokens[&Role::Unassigned].as_str()),
            ("action", "approve"),
            ("id", &records.pending),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        bulk.status(),
        StatusCode::SEE_OTHER,
        "a bulk decision redirects to the queue"
    );
    assert_eq!(bulk.headers()["location"], "/admin");
    let (_, page) = t.get_html(unassigned, "/admin").await;
    assert!(
        !page.contains(Z),
        "a bulk result names no applicant the reviewer may not see"
    );
    assert!(page.contains("no such application"), "{page}");

    // Every route, for every role; the ones that end a session last, and on
    // each route the roles it refuses before those it lets through.
    let mut routes = route_table();
    routes.sort_by_key(|r| r.path.ends_with("logout") || r.path.ends_with("signout"));
    let mut walked = 0;
    for route in &routes {
        let names_a_record = route.path.contains("{id}");
        let mut roles: Vec<Role> = browsers.keys().copied().collect();
        roles.sort_by_key(|role| expect(route.access, *role, names_a_record) == Expect::Allowed);
        for role in roles {
            let path = records.path(route.path, role);
            let b = &browsers[&role];
            if route.method == reqwest::Method::POST
                && expect(route.access, role, names_a_record) == Expect::Allowed
            {
                // Every form checks its CSRF token before anything else.
                let forged = b
                    .post(t.url(&path))
                    .form(&[("authenticity_token", "forged")])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    forged.status(),
                    StatusCode::FORBIDDEN,
                    "{} {path} as {role:?} with a forged CSRF token",
                    route.method
                );
            }
            let response = if route.method == reqwest::Method::GET {
                b.get(t.url(&path)).send().await.unwrap()
            } else {
                b.post(t.url(&path))
                    .form(&[("authenticity_token", tokens[&role].as_str())])
                    .send()
                    .await
                    .unwrap()
            };
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let what = format!(
                "{} {} as {role:?} ({:?}): {status} {location}",
                route.method, path, route.access
            );
            match expect(route.access, role, names_a_record) {
                Expect::SignIn(to) => assert!(status.is_redirection() && location == to, "{what}"),
                Expect::Refused => assert!(
                    [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND].contains(&status),
                    "{what}"
                ),
                Expect::Allowed => {
                    let refused = [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND].contains(&status);
                    let sent_to_sign_in =
                        status.is_redirection() && ["/admin/login", "/signin"].contains(&location.as_str());
                    assert!(
                        !status.is_server_error() && !refused && !sent_to_sign_in,
                        "{what}"
                    );
                }
                Expect::NoFailure => assert!(!status.is_server_error(), "{what}"),
                Expect::Unauthorized => assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}"),
            }
            walked += 1;
        }
    }
    assert_eq!(walked, routes.len() * browsers.len());
    assert!(
        routes.iter().any(|r| r.access == Access::ReviewerOfModel),
        "the table names model-scoped routes"
    );
}
